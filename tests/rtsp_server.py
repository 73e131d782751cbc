"""A small RTSP server on loopback for the network tests, run by the system python3 (GStreamer GI).

Serve a live H.264 test pattern (or a video file) at rtsp://127.0.0.1:PORT/NAME:

    /usr/bin/python3 tests/rtsp_server.py --port 8554 --name cam --size 160x96 --fps 25

Receive a published stream (RTSP RECORD, what `ffmpeg -f rtsp` and PyAV's rtsp muxer send) into a
Matroska file:

    /usr/bin/python3 tests/rtsp_server.py --port 8554 --name in --record out.mkv

The script prints "ready" on stdout once it listens, and stops cleanly on SIGTERM or SIGINT (a
recording is finished with an end-of-stream so the file is complete). It uses only the system
python3 and GStreamer; the project's own environment does not need `gi`.
"""

from __future__ import annotations

import argparse
import signal
import sys


def _play_launch(args: argparse.Namespace) -> str:
    width, height = (int(v) for v in args.size.split("x"))
    if args.file:
        # A file is decoded and re-encoded so that any container or codec GStreamer reads will do.
        source = f'filesrc location="{args.file}" ! decodebin ! videoconvert ! videoscale ! videorate'
    else:
        source = f"videotestsrc is-live=true pattern={args.pattern}"
    caps = f"video/x-raw,format=I420,width={width},height={height},framerate={args.fps}/1"
    # zerolatency, a short GOP and SPS/PPS before every keyframe: a client that (re)connects decodes
    # within a fraction of a second.
    encoder = (f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={args.gop} "
               f"bitrate={args.bitrate} threads=1")
    return f"( {source} ! {caps} ! {encoder} ! rtph264pay name=pay0 pt=96 config-interval=-1 )"


def _record_launch(args: argparse.Namespace) -> str:
    # streamable Matroska stays readable even if this process is killed before the end.
    return (f'( rtph264depay name=depay0 ! h264parse ! matroskamux streamable=true '
            f'! filesink location="{args.record}" )')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="cam", help="mount point: rtsp://127.0.0.1:PORT/NAME")
    parser.add_argument("--file", help="serve this video file (decoded and re-encoded) instead of a pattern")
    parser.add_argument("--pattern", default="ball", help="videotestsrc pattern")
    parser.add_argument("--size", default="160x96", help="WIDTHxHEIGHT")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--gop", type=int, default=10, help="frames between keyframes")
    parser.add_argument("--bitrate", type=int, default=300, help="kbit/s")
    parser.add_argument("--record", help="receive a published stream into this .mkv file")
    parser.add_argument("--user", help="require this user name (with --password)")
    parser.add_argument("--password")
    args = parser.parse_args()

    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))

    factory = GstRtspServer.RTSPMediaFactory()
    if args.record:
        factory.set_transport_mode(GstRtspServer.RTSPTransportMode.RECORD)
        factory.set_launch(_record_launch(args))
        # TEARDOWN sends end-of-stream first, so the muxer finishes the file.
        factory.set_eos_shutdown(True)
    else:
        factory.set_launch(_play_launch(args))
        factory.set_shared(True)

    if args.user:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "user")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password or ""), token)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_permission_for_role("user", GstRtspServer.RTSP_PERM_MEDIA_FACTORY_ACCESS, True)
        permissions.add_permission_for_role("user", GstRtspServer.RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, True)
        factory.set_permissions(permissions)

    server.get_mount_points().add_factory(f"/{args.name}", factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        return 1

    loop = GLib.MainLoop()

    def _stop(*_: object) -> bool:
        loop.quit()
        return GLib.SOURCE_REMOVE

    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, _stop)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, _stop)
    print("ready", flush=True)
    loop.run()
    # Close client sessions so that a recording gets its end-of-stream before the process exits.
    server.client_filter(lambda _server, client, *_: GstRtspServer.RTSPFilterResult.REMOVE)
    context = GLib.MainContext.default()
    while context.pending():
        context.iteration(False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

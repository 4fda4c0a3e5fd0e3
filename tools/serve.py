#!/usr/bin/python3
"""Serve a directory with a throw-away loopback nginx (tools/testlib) until SIGTERM/SIGINT.

Prints the base URL, and writes it to --url-file once nginx answers, so a
shell script can wait for that file. GET with Range and WebDAV PUT are enabled.

usage: serve.py ROOT [--port N] [--url-file PATH]
"""
import argparse
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testlib  # noqa: E402  (installs SIGTERM -> KeyboardInterrupt)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('root')
    ap.add_argument('--port', type=int, default=None, help='default: a free port')
    ap.add_argument('--url-file', default=None)
    args = ap.parse_args()
    if not os.path.isdir(args.root):
        print(f'serve.py: {args.root}: not a directory', file=sys.stderr)
        return 1
    try:
        with testlib.Nginx(args.root, port=args.port) as n:
            print(f'serving {os.path.abspath(args.root)} at {n.base_url} (nginx pid {n.proc.pid})',
                  flush=True)
            if args.url_file:
                tmp = args.url_file + '.tmp'
                with open(tmp, 'w') as f:
                    f.write(n.base_url + '\n')
                os.replace(tmp, args.url_file)
            try:
                while n.proc.poll() is None:
                    threading.Event().wait(1.0)
            finally:
                if args.url_file:
                    try:
                        os.remove(args.url_file)
                    except FileNotFoundError:
                        pass
            print(f'serve.py: nginx exited with {n.proc.returncode}', file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        return 0
    except testlib.nginx.NginxError as e:
        print(f'serve.py: {e}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())

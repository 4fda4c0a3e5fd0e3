"""Shared fixtures for the shelbyfs integration tests and the demo.

Everything here binds 127.0.0.1 only, bounds every wait, and kills only the
processes it started (by PID). See STYLE.md section 6.
"""
from .cleanup import install_signal_handlers, make_tmpdir, register_mount, unregister_mount
from .data import generate_tree, list_tree, pack, read_manifest, write_manifest
from .fsops import ReadResult, read_file, read_in_subprocess
from .fmnist import CLASS_NAMES, convert as fmnist_to_imagefolder
from .mount import (Mount, MountError, find_daemon_pids, is_mounted, isolated_env, lazy_unmount,
                    wait_unmounted)
from .nginx import Nginx, free_port
from .prereq import require_prereqs, shelbyfs_bin, skip_unless_present
from .stall import StallServer

__all__ = [
    'CLASS_NAMES', 'Mount', 'MountError', 'Nginx', 'StallServer', 'find_daemon_pids',
    'fmnist_to_imagefolder', 'free_port', 'generate_tree', 'install_signal_handlers',
    'is_mounted', 'isolated_env', 'lazy_unmount', 'make_tmpdir', 'list_tree', 'pack', 'read_manifest', 'register_mount',
    'require_prereqs', 'shelbyfs_bin', 'skip_unless_present', 'unregister_mount', 'wait_unmounted', 'ReadResult',
    'read_file', 'read_in_subprocess', 'write_manifest',
]

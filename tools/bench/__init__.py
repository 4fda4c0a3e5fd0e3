"""Helpers of tools/bench.py: nginx profiles and rclone mounts (servers), the
benchmark's data (datasets), the child-process workloads (probe.py) and the
report (report.py: targets, Markdown, SVG, HTML)."""

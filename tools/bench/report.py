"""Targets, verdicts and the Markdown/HTML/SVG renderings of a benchmark run.

A run is a list of row dicts (see tools/bench.py) plus metadata. `checks()`
turns rows into target checks: each has a measured value, a target, a verdict
(PASS, MISS, UNSUPPORTED, ERROR, or N/A when an input row is missing) and a
score normalised so that 1.0 is exactly on target and higher is better
(value/target for "at least" targets, target/value for "below" targets). All
ratios are of numbers measured in the same run, so they hold up better than
absolute numbers on a shared machine.
"""
import html
import math

MIB = 1 << 20


# --- looking rows up -----------------------------------------------------------

def find(rows, group, mode, profile=None):
    for r in rows:
        if r.get('group') == group and r.get('mode') == mode and r.get('profile') == profile:
            return r
    return None


def _val(row, key):
    if row is None or row.get('status') not in ('ok', 'unsupported'):
        return None
    v = row.get(key)
    return v if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)) else None


def _why_missing(*rows):
    for r in rows:
        if r is None:
            return 'N/A', 'not measured'
        if r.get('status') == 'unsupported':
            return 'UNSUPPORTED', r.get('error', '')
        if r.get('status') != 'ok':
            return 'ERROR', f'{r.get("mode")}: {r.get("error", r.get("status"))}'
    return 'N/A', 'value missing'


class Check:
    """One target: `value op target` with op in ('>=', '>', '<', '<=')."""

    def __init__(self, name, profile, value, op, target, unit, detail='', verdict=None, note=''):
        self.name = name
        self.profile = profile
        self.value = value
        self.op = op
        self.target = target
        self.unit = unit
        self.detail = detail
        self.note = note
        if verdict is None:
            ok = {'>=': value >= target, '>': value > target, '<': value < target,
                  '<=': value <= target}[op] if value is not None else None
            verdict = 'PASS' if ok else 'MISS'
        self.verdict = verdict

    @property
    def score(self):
        if self.value is None or self.verdict in ('N/A', 'ERROR'):
            return None
        if self.op in ('>=', '>'):
            return self.value / self.target if self.target else None
        return self.target / self.value if self.value else math.inf

    def as_dict(self):
        return {'name': self.name, 'profile': self.profile, 'value': self.value, 'op': self.op,
                'target': self.target, 'unit': self.unit, 'verdict': self.verdict,
                'score': self.score, 'detail': self.detail, 'note': self.note}


def _ratio_check(name, profile, num_row, num_key, den_row, den_key, op, target, fmt, unit='x'):
    a, b = _val(num_row, num_key), _val(den_row, den_key)
    if a is None or b is None or b == 0:
        verdict, why = _why_missing(num_row, den_row)
        return Check(name, profile, None, op, target, unit, why, verdict=verdict)
    detail = f'{fmt(a)} / {fmt(b)}'
    verdict = None
    note = ''
    for r in (num_row, den_row):
        if r.get('status') == 'unsupported':
            verdict, note = 'UNSUPPORTED', r.get('error', '')
    return Check(name, profile, a / b, op, target, unit, detail, verdict=verdict, note=note)


def _abs_check(name, profile, row, key, op, target, unit, fmt):
    v = _val(row, key)
    if v is None:
        verdict, why = _why_missing(row)
        return Check(name, profile, None, op, target, unit, why, verdict=verdict)
    # 'unsupported' on an ok row: measured without the feature the target is about.
    reason = row.get('error', '') if row.get('status') == 'unsupported' else row.get('unsupported', '')
    return Check(name, profile, v, op, target, unit, fmt(v), verdict='UNSUPPORTED' if reason else None,
                 note=reason)


def sps(v):
    return f'{v:,.0f} samples/s'


def mbs(v):
    return f'{v:,.0f} MiB/s'


def secs(v):
    return f'{v:.3f} s'


def iops(v):
    return f'{v:,.0f} IOPS'


def mib(v):
    return f'{v:,.0f} MiB'


def checks(rows, profiles, memory_limit_mib):
    """All target checks for the rows of one run."""
    out = []
    for p in profiles:
        f = lambda g, m: find(rows, g, m, p)  # noqa: E731
        local = f('imagefolder', 'local') or find(rows, 'imagefolder', 'local')
        cold, warm = f('imagefolder', 'shelbyfs-cold'), f('imagefolder', 'shelbyfs-warm')
        if local or cold or warm:
            out.append(_ratio_check('ImageFolder warm / local (samples/s)', p, warm, 'samples_per_s',
                                    local, 'samples_per_s', '>=', 0.95, sps))
            out.append(_ratio_check('ImageFolder cold / warm (samples/s)', p, cold, 'samples_per_s',
                                    warm, 'samples_per_s', '>=', 0.70, sps))
            out.append(_abs_check('ImageFolder cold: time to first batch', p, cold, 'first_batch_s',
                                  '<', 0.3, 's', secs))
        seq, c8 = f('seq', 'shelbyfs-cold'), f('seq', 'curl-8')
        if seq or c8:
            out.append(_ratio_check('seq read 1 shard cold / curl-8', p, seq, 'mb_per_s', c8,
                                    'mb_per_s', '>=', 0.90, mbs))
        cp, put = f('cp', 'shelbyfs'), f('cp', 'curl-put')
        if cp or put:
            out.append(_ratio_check('checkpoint cp / curl PUT', p, cp, 'mb_per_s', put, 'mb_per_s',
                                    '>=', 0.80, mbs))
        r64 = f('rss64', 'shelbyfs')
        if r64:
            out.append(_abs_check(f'peak RSS, 64 open files being read '
                                  f'(memory_limit={memory_limit_mib:g}MiB)', p, r64, 'rss_peak_mib',
                                  '<=', memory_limit_mib + 64, 'MiB', mib))
        # Peer: shelbyfs / rclone as a speed-up factor (> 1 means shelbyfs is faster).
        for name, group, s_mode, r_mode, key, fmt, higher in (
                ('vs rclone: ImageFolder cold samples/s', 'imagefolder', 'shelbyfs-cold', 'rclone-cold',
                 'samples_per_s', sps, True),
                ('vs rclone: ImageFolder warm samples/s', 'imagefolder', 'shelbyfs-warm', 'rclone-warm',
                 'samples_per_s', sps, True),
                ('vs rclone: ImageFolder cold first batch', 'imagefolder', 'shelbyfs-cold',
                 'rclone-cold', 'first_batch_s', secs, False),
                ('vs rclone: seq read cold MiB/s', 'seq', 'shelbyfs-cold', 'rclone-cold', 'mb_per_s',
                 mbs, True),
                ('vs rclone: random 4 KiB IOPS cold', 'rand', 'shelbyfs', 'rclone', 'iops', iops, True),
                ('vs rclone: checkpoint cp MiB/s', 'cp', 'shelbyfs', 'rclone', 'mb_per_s', mbs, True),
                ('vs rclone: 64 readers MiB/s', 'rss64', 'shelbyfs', 'rclone', 'mb_per_s', mbs, True)):
            s_row, r_row = f(group, s_mode), f(group, r_mode)
            if not (s_row or r_row):
                continue
            if higher:
                out.append(_ratio_check(name, p, s_row, key, r_row, key, '>', 1.0, fmt))
            else:
                out.append(_ratio_check(name, p, r_row, key, s_row, key, '>', 1.0, fmt))
    m = find(rows, 'm1m', 'shelbyfs')
    if m:
        n = m.get('samples', 0)
        label = f'{n / 1e6:g}M' if n >= 1e6 else f'{n / 1e3:g}k'
        name = f'{label}-sample manifest'
        out.append(_abs_check(f'{name}: mount time', None, m, 'mount_s', '<', 3.0, 's', secs))
        out.append(_abs_check(f'{name}: peak RSS', None, m, 'rss_peak_mib', '<', 400, 'MiB', mib))
        out.append(_abs_check(f'{name}: find | wc -l', None, m, 'find_s', '<', 2.0, 's', secs))
    return out


def info_ratios(rows, profiles):
    """Ratios without a target, for context (ceilings against each other)."""
    out = []
    for p in profiles:
        f = lambda g, m: find(rows, g, m, p)  # noqa: E731
        pairs = (('curl-8 / curl-1', f('seq', 'curl-8'), f('seq', 'curl-1'), 'mb_per_s'),
                 ('seq read cold / curl-1', f('seq', 'shelbyfs-cold'), f('seq', 'curl-1'), 'mb_per_s'),
                 ('seq read cold / local page cache', f('seq', 'shelbyfs-cold'),
                  find(rows, 'seq', 'page-cache'), 'mb_per_s'),
                 ('curl-8 / local page cache', f('seq', 'curl-8'), find(rows, 'seq', 'page-cache'),
                  'mb_per_s'))
        for name, a, b, key in pairs:
            va, vb = _val(a, key), _val(b, key)
            if va is not None and vb:
                out.append({'name': name, 'profile': p, 'value': va / vb,
                            'detail': f'{mbs(va)} / {mbs(vb)}'})
    return out


# --- tables ----------------------------------------------------------------------

def _fmt(v, digits=2):
    if v is None:
        return '–'
    if isinstance(v, float):
        if math.isinf(v):
            return '∞'
        if abs(v) >= 1000:
            return f'{v:,.0f}'
        if abs(v) >= 100:
            return f'{v:.0f}'
        return f'{v:.{digits}f}' if abs(v) >= 0.1 or v == 0 else f'{v:.3f}'
    return str(v)


def _status(r):
    if r.get('status') == 'ok':
        notes = [n for n in (r.get('unsupported') and 'UNSUPPORTED: ' + r['unsupported'], r.get('note'))
                 if n]
        return '; '.join(notes) or 'ok'
    return f'{r.get("status", "?").upper()}: {r.get("error", "")}'


def tables(run):
    """[(title, headers, rows of cells)] for everything measured in `run`."""
    rows = run['rows']
    plabel = {p['name']: p['name'] for p in run['meta'].get('profiles', [])}
    plabel[None] = '–'
    out = []

    def sel(group):
        return [r for r in rows if r.get('group') == group]

    if sel('imagefolder'):
        meta = run['meta']
        title = (f'Fashion-MNIST ImageFolder: {meta.get("images")} PNGs, ToTensor, DataLoader '
                 f'batch 64, 2 workers, shuffled')
        hdr = ['profile', 'mode', 'init_s', 'first_batch_s', 'samples/s', 'total_s', 'mount_s',
               'peak RSS MiB', 'cache hit ratio', 'status']
        body = [[plabel.get(r.get('profile'), r.get('profile')), r['mode'], _fmt(r.get('init_s'), 3),
                 _fmt(r.get('first_batch_s'), 3), _fmt(r.get('samples_per_s')), _fmt(r.get('total_s')),
                 _fmt(r.get('mount_s'), 3), _fmt(r.get('rss_peak_mib')),
                 _fmt(r.get('cache_hit_ratio'), 3), _status(r)] for r in sel('imagefolder')]
        out.append((title, hdr, body))
    thr = sel('seq') + sel('rand') + sel('cp')
    if thr:
        hdr = ['profile', 'workload', 'mode', 'result', 'time_s', 'peak RSS MiB', 'cache hit ratio',
               'status']
        body = []
        for r in thr:
            if r['group'] == 'rand':
                res = (f'{_fmt(r.get("iops"))} IOPS (p50 {_fmt(r.get("p50_ms"))} ms, '
                       f'p99 {_fmt(r.get("p99_ms"))} ms)' if r.get('iops') is not None else '–')
            else:
                res = f'{_fmt(r.get("mb_per_s"))} MiB/s' if r.get('mb_per_s') is not None else '–'
            body.append([plabel.get(r.get('profile'), r.get('profile')), r.get('workload', r['group']),
                         r['mode'], res, _fmt(r.get('seconds')), _fmt(r.get('rss_peak_mib')),
                         _fmt(r.get('cache_hit_ratio'), 3), _status(r)])
        out.append(('Throughput: 1 shard of random data, ceilings and peers', hdr, body))
    mem = sel('rss64') + sel('m1m')
    if mem:
        hdr = ['profile', 'workload', 'mode', 'peak RSS MiB', 'result', 'status']
        body = []
        for r in mem:
            if r['group'] == 'rss64':
                res = (f'{_fmt(r.get("mb_per_s"))} MiB/s aggregate, {r.get("option", "")}'
                       if r.get('mb_per_s') is not None else r.get('option', ''))
            else:
                res = (f'mount {_fmt(r.get("mount_s"), 3)} s; find | wc -l = {r.get("find_count")} '
                       f'in {_fmt(r.get("find_s"), 3)} s')
            body.append([plabel.get(r.get('profile'), r.get('profile')), r.get('workload', r['group']),
                         r['mode'], _fmt(r.get('rss_peak_mib')), res, _status(r)])
        out.append(('Memory and metadata', hdr, body))
    return out


def check_table(check_list):
    hdr = ['check', 'profile', 'measured', 'target', 'verdict', 'from']
    body = []
    for c in check_list:
        measured = '–' if c.value is None else (
            f'{c.value:.2f}x' if c.unit == 'x' else f'{_fmt(c.value, 3)} {c.unit}')
        target = f'{c.op} {c.target:g}{"x" if c.unit == "x" else " " + c.unit}'
        why = c.detail + (f' ({c.note})' if c.note else '')
        body.append([c.name, c.profile or '–', measured, target, c.verdict, why])
    return hdr, body


def _md_cell(s):
    return str(s).replace('|', '\\|').replace('\n', ' ')


def md_table(hdr, body):
    lines = ['| ' + ' | '.join(hdr) + ' |', '|' + '---|' * len(hdr)]
    lines += ['| ' + ' | '.join(_md_cell(c) for c in row) + ' |' for row in body]
    return '\n'.join(lines)


def worst(check_list, n=6):
    scored = [c for c in check_list if c.score is not None and c.verdict in ('PASS', 'MISS')]
    return sorted(scored, key=lambda c: c.score)[:n]


def markdown(run, check_list, info):
    meta = run['meta']
    parts = [f'# shelbyfs benchmark ({meta.get("mode")})', '',
             f'{meta.get("started")} · commit {meta.get("commit")} · {meta.get("host")}', '']
    parts += [f'`{meta.get("command")}` ({meta.get("shelbyfs_version")}, '
              f'sha256 {meta.get("shelbyfs_sha256")}; {meta.get("duration_s")} s)', '']
    if meta.get('interrupted'):
        parts += ['**Interrupted: partial results.**', '']
    if meta.get('failure'):
        parts += [f'**Run failed: {meta["failure"]}** (partial results)', '']
    for p in meta.get('profiles', []):
        parts.append(f'- profile **{p["name"]}**: {p["description"]}')
    parts.append('')
    for title, hdr, body in tables(run):
        parts += [f'## {title}', '', md_table(hdr, body), '']
    hdr, body = check_table(check_list)
    parts += ['## Targets (ratios measured within this run)', '', md_table(hdr, body), '']
    if info:
        parts += ['Context (no target): ' + '; '.join(
            f'{i["name"]} [{i["profile"]}] = {i["value"]:.2f}x ({i["detail"]})' for i in info), '']
    w = worst(check_list)
    if w:
        parts += ['## Furthest from target (score = measured relative to target; 1.00 = on target)', '']
        parts += [f'{k + 1}. {c.name} [{c.profile or "–"}]: score {c.score:.2f} ({c.verdict}; {c.detail})'
                  for k, c in enumerate(w)]
        parts.append('')
    counts = {}
    for c in check_list:
        counts[c.verdict] = counts.get(c.verdict, 0) + 1
    parts.append('Verdicts: ' + ', '.join(f'{v} {k}' for k, v in sorted(counts.items())))
    return '\n'.join(parts) + '\n'


# --- chart ---------------------------------------------------------------------------

_COLORS = {'PASS': '#2e7d32', 'MISS': '#c62828', 'UNSUPPORTED': '#9e9e9e'}


def svg_chart(check_list, width=1100):
    """Horizontal bars of each check's score on a log scale; the line at 1.0 is the target."""
    items = [c for c in check_list if c.score is not None and c.verdict in _COLORS]
    bar_h, gap, left, right, top = 18, 6, 520, 60, 44
    height = top + len(items) * (bar_h + gap) + 40
    lo, hi = 0.05, 20.0
    plot_w = width - left - right

    def x(v):
        v = min(max(v, lo), hi)
        return left + plot_w * (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))

    e = html.escape
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           '<text x="10" y="20" font-size="14" font-weight="bold">shelbyfs: measured against '
           'target (log scale; 1x = on target, right of the line meets it; grey = unsupported)</text>']
    for t in (0.1, 0.3, 0.5, 1, 2, 5, 10):
        out.append(f'<line x1="{x(t):.1f}" y1="{top - 8}" x2="{x(t):.1f}" y2="{height - 30}" '
                   f'stroke="{"#000" if t == 1 else "#ddd"}" stroke-width="{2 if t == 1 else 1}"/>')
        out.append(f'<text x="{x(t):.1f}" y="{height - 14}" text-anchor="middle">{t:g}x</text>')
    for i, c in enumerate(items):
        y = top + i * (bar_h + gap)
        x0, x1 = x(1.0), x(c.score)
        label = f'{c.name} [{c.profile}]' if c.profile else c.name
        out.append(f'<text x="{left - 6}" y="{y + bar_h - 5}" text-anchor="end">{e(label)}</text>')
        out.append(f'<rect x="{min(x0, x1):.1f}" y="{y}" width="{max(1.0, abs(x1 - x0)):.1f}" '
                   f'height="{bar_h}" fill="{_COLORS[c.verdict]}"><title>{e(c.detail)}</title></rect>')
        out.append(f'<text x="{max(x0, x1) + 4:.1f}" y="{y + bar_h - 5}">{c.score:.2f}</text>')
    out.append('</svg>')
    return '\n'.join(out)


def html_page(run, check_list, info, svg):
    meta = run['meta']
    e = html.escape

    def table(hdr, body):
        h = ''.join(f'<th>{e(str(c))}</th>' for c in hdr)
        rows = []
        for row in body:
            cells = []
            for c in row:
                s = str(c)
                style = {'PASS': ' class="pass"', 'MISS': ' class="miss"'}.get(s, '')
                cells.append(f'<td{style}>{e(s)}</td>')
            rows.append('<tr>' + ''.join(cells) + '</tr>')
        return f'<table><tr>{h}</tr>{"".join(rows)}</table>'

    parts = ['<!doctype html><html><head><meta charset="utf-8"><title>shelbyfs benchmark</title>',
             '<style>body{font-family:sans-serif;margin:2em;max-width:1400px}'
             'table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;'
             'font-size:13px;text-align:left}th{background:#f4f4f4}.pass{color:#2e7d32;font-weight:bold}'
             '.miss{color:#c62828;font-weight:bold}</style></head><body>',
             f'<h1>shelbyfs benchmark ({e(str(meta.get("mode")))})</h1>',
             f'<p>{e(str(meta.get("started")))} · commit {e(str(meta.get("commit")))} · '
             f'{e(str(meta.get("host")))}</p><ul>']
    parts += [f'<li><b>{e(p["name"])}</b>: {e(p["description"])}</li>' for p in meta.get('profiles', [])]
    parts.append('</ul>')
    parts.append(svg)
    hdr, body = check_table(check_list)
    parts += ['<h2>Targets</h2>', table(hdr, body)]
    if info:
        parts += ['<h3>Context (no target)</h3>',
                  table(['ratio', 'profile', 'value', 'from'],
                        [[i['name'], i['profile'], f'{i["value"]:.2f}x', i['detail']] for i in info])]
    for title, thdr, tbody in tables(run):
        parts += [f'<h2>{e(title)}</h2>', table(thdr, tbody)]
    parts.append('</body></html>')
    return '\n'.join(parts)

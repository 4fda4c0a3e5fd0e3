#!/usr/bin/python3
"""Integration: examples/train_fmnist.py checkpoints into the mount and resumes exactly after SIGKILL.

Packs a few thousand Fashion-MNIST PNGs as an ImageFolder tree, serves the
shards with nginx (which also takes the checkpoint uploads over WebDAV under
/checkpoints/) and mounts the manifest URL with
`-o checkpoints=<nginx>/checkpoints/,spool_dir=<tmp>`. The training script
reads <mnt>/samples and saves <mnt>/checkpoints/run1/latest.pt every
SAVE_EVERY steps. The test SIGKILLs the trainer (that PID only) in the middle
of an interval after at least two saves, restarts it and checks that
  - it resumes from the last save it printed (or a later one whose line was
    lost with the kill), with the optimizer's step count equal to that step;
  - the steps continue at S+1 with the same losses the killed run printed
    for those steps and the same losses as an uninterrupted reference run;
  - it finishes at MAX_STEPS with weights bitwise equal to the reference run's;
  - a fresh mount (new spool dir) shows checkpoints/run1/latest.pt with the
    same bytes.
A second case does the same with the checkpoints in a plain local directory
(data still read from a mount, with -o checkpoints=off), which checks
the script's resume logic independently of the checkpoint store.
Run: SHELBYFS_BIN=build/src/shelbyfs /usr/bin/python3 tests/integration/test_train_resume.py
"""
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, '..', '..'))
sys.path.insert(0, os.path.join(REPO, 'tools'))
import testlib  # noqa: E402
from testlib import cleanup  # noqa: E402
from testlib.mount import pid_alive  # noqa: E402

TRAIN = os.path.join(REPO, 'examples', 'train_fmnist.py')
COUNT = int(os.environ.get('SHELBYFS_TRAIN_RESUME_COUNT', '3000'))
BATCH = 32
SAVE_EVERY = 20
MAX_STEPS = 200                      # a bit over 2 epochs of 3000 images
KILL_AT = 2 * SAVE_EVERY + SAVE_EVERY // 2   # mid-interval, after two saves
RUN_TIMEOUT = 120.0                  # bound on one training run
KILL_TIMEOUT = 90.0                  # bound on reaching KILL_AT

STEP_RE = re.compile(r'^step=(\d+) epoch=(\d+) loss=(\S+)$')
SAVED_RE = re.compile(r'^saved step=(\d+) ')
RESUMED_RE = re.compile(r'^resumed from step=(\d+) epoch=(\d+) position=(\d+) optimizer_step=(\S+) ')

G = {}


def setUpModule():
    tmp = testlib.make_tmpdir('shelbyfs-test-train-resume-')
    unittest.addModuleCleanup(shutil.rmtree, tmp, True)
    src, out = os.path.join(tmp, 'src'), os.path.join(tmp, 'out')
    t0 = time.monotonic()
    counts = testlib.fmnist_to_imagefolder(src, COUNT, 'train')
    assert sum(counts.values()) == COUNT, counts
    testlib.pack(src, out)
    print(f'\nconvert + pack {COUNT} images: {time.monotonic() - t0:.2f}s', file=sys.stderr)
    nginx = testlib.Nginx(out).__enter__()
    unittest.addModuleCleanup(nginx.close)
    G.update(tmp=tmp, src=src, out=out, nginx=nginx, url=nginx.url('manifest.json'))


# -- running the trainer ----------------------------------------------------------

class Output:
    """Parsed stdout of one trainer run."""

    def __init__(self, text):
        self.text = text
        # A line still being written (no newline yet) is not parsed.
        self.lines = text.split('\n')[:-1]
        self.steps = {}            # step -> loss string
        self.step_order = []
        self.saved = []
        self.resumed = None        # (step, epoch, position, optimizer_step string)
        self.done = None
        for line in self.lines:
            if m := STEP_RE.match(line):
                self.steps[int(m.group(1))] = m.group(3)
                self.step_order.append(int(m.group(1)))
            elif m := SAVED_RE.match(line):
                self.saved.append(int(m.group(1)))
            elif m := RESUMED_RE.match(line):
                self.resumed = (int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4))
            elif line.startswith('done step='):
                self.done = int(line.split('=', 1)[1])

    def info(self):
        return '\n'.join(line for line in self.lines if not STEP_RE.match(line))


def trainer_cmd(data, ckdir):
    return [sys.executable, TRAIN, '--data', data, '--checkpoint-dir', ckdir,
            '--batch-size', str(BATCH), '--save-every', str(SAVE_EVERY),
            '--max-steps', str(MAX_STEPS), '--log-every', '1', '--workers', '2',
            '--threads', '2', '--seed', '7']


def read_text(path):
    with open(path, errors='replace') as f:
        return f.read()


def children_of(pid):
    kids = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/stat') as f:
                fields = f.read().rsplit(')', 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(entry))
    return kids


class Trainer:
    """One trainer process, stdout/stderr to files (no pipe to drain, no EOF to wait for)."""

    def __init__(self, data, ckdir, logdir, name):
        self.out_path = os.path.join(logdir, f'{name}.out')
        self.err_path = os.path.join(logdir, f'{name}.err')
        with open(self.out_path, 'wb') as out, open(self.err_path, 'wb') as err:
            self.proc = subprocess.Popen(trainer_cmd(data, ckdir), stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=err, cwd=REPO)
        cleanup.register_pid(self.proc.pid)
        self.t0 = time.monotonic()

    def output(self):
        return Output(read_text(self.out_path))

    def describe(self):
        return (f'--- stdout (step lines omitted) ---\n{self.output().info()}\n'
                f'--- stderr ---\n{read_text(self.err_path)[-3000:]}')

    def wait(self, timeout=RUN_TIMEOUT):
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f'trainer still running after {timeout}s; killed\n{self.describe()}')
        cleanup.unregister_pid(self.proc.pid)
        return rc

    def kill_at_step(self, step, timeout=KILL_TIMEOUT):
        """SIGKILL the trainer (its PID only) once it has printed `step`; returns the seconds it ran."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.output()
            if out.step_order and out.step_order[-1] >= step:
                break
            if self.proc.poll() is not None:
                raise AssertionError(f'trainer exited ({self.proc.returncode}) before step {step}\n'
                                     f'{self.describe()}')
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f'trainer did not reach step {step} in {timeout}s\n{self.describe()}')
            time.sleep(0.005)
        workers = children_of(self.proc.pid)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        cleanup.unregister_pid(self.proc.pid)
        ran = time.monotonic() - self.t0
        # Its DataLoader workers notice the parent is gone within ~5 s and exit;
        # wait for them so they do not hold files in the mount at unmount.
        wait_gone(workers, 20.0)
        return ran

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        cleanup.unregister_pid(self.proc.pid)


def wait_gone(pids, timeout):
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for p in pids:
        if pid_alive(p):      # an orphaned worker of ours that did not exit: kill it by PID
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


def epoch_position(step):
    """(epoch, samples of it consumed) after `step` steps, as a checkpoint records them."""
    per_epoch = -(-COUNT // BATCH)
    epoch, batches = divmod(step, per_epoch)
    if batches == 0 and step > 0:
        return epoch - 1, COUNT
    return epoch, batches * BATCH


def copy_out(path, tmpdir):
    """Copy `path` (possibly in the mount) to a local file with a bounded child process."""
    dest = os.path.join(tmpdir, f'copy-{time.monotonic_ns()}.pt')
    try:
        r = subprocess.run(['cp', '--', path, dest], capture_output=True, text=True, timeout=60,
                           check=False)
    except subprocess.TimeoutExpired:
        raise AssertionError(f'cp {path} did not finish within 60s') from None
    if r.returncode != 0:
        raise AssertionError(f'cp {path} failed: {r.stderr.strip()}')
    return dest


def load_checkpoint(path, tmpdir=None):
    """torch.load a checkpoint; a file in a mount is copied out first (bounded)."""
    import torch
    local = copy_out(path, tmpdir) if tmpdir else path
    with open(local, 'rb') as f:
        return torch.load(f, map_location='cpu')


def adam_steps(ckpt):
    return {int(s['step']) for s in ckpt['optimizer']['state'].values()}


def sha256_file(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


_reference = {}


def reference():
    """An uninterrupted run (local data, local checkpoint dir): its Output and final checkpoint."""
    if not _reference:
        ckdir = os.path.join(G['tmp'], 'reference-ckpt')
        t = Trainer(G['src'], ckdir, G['tmp'], 'reference')
        rc = t.wait()
        out = t.output()
        assert rc == 0 and out.done == MAX_STEPS, f'reference run failed ({rc})\n{t.describe()}'
        _reference.update(out=out, ckpt=load_checkpoint(os.path.join(ckdir, 'latest.pt')),
                          seconds=time.monotonic() - t.t0)
        print(f'\nreference run (local dir): {_reference["seconds"]:.1f}s; '
              f'{[line for line in out.lines if line.startswith("trained ")]}', file=sys.stderr)
    return _reference


# -- the tests ---------------------------------------------------------------------

class TrainResumeTests(unittest.TestCase):
    def kill_and_resume(self, data, ckdir, label):
        """Run, SIGKILL mid-training, check latest.pt, resume to MAX_STEPS; returns the final Output."""
        import torch

        ref = reference()
        logdir = testlib.make_tmpdir('shelbyfs-train-logs-')
        self.addCleanup(shutil.rmtree, logdir, True)

        first = Trainer(data, ckdir, logdir, 'first')
        self.addCleanup(first.kill)
        ran = first.kill_at_step(KILL_AT)
        out1 = first.output()
        self.assertIsNone(out1.resumed, f'first run found an old checkpoint\n{first.describe()}')
        self.assertIsNone(out1.done, f'first run finished before the kill\n{first.describe()}')
        self.assertGreaterEqual(len(out1.saved), 2, first.describe())
        last_printed = out1.saved[-1]
        killed_at = out1.step_order[-1]
        self.assertEqual(out1.saved, list(range(SAVE_EVERY, last_printed + 1, SAVE_EVERY)))

        # What is on storage right now: a whole checkpoint at the last printed
        # save, or at most one later save whose line the kill swallowed.
        latest = os.path.join(ckdir, 'latest.pt')
        ck = load_checkpoint(latest, logdir)
        S = ck['step']
        self.assertIn(S, (last_printed, last_printed + SAVE_EVERY),
                      f'latest.pt has step {S}; last printed save was {last_printed}')
        self.assertEqual(adam_steps(ck), {S})
        del ck

        second = Trainer(data, ckdir, logdir, 'second')
        self.addCleanup(second.kill)
        rc = second.wait()
        out2 = second.output()
        self.assertEqual(rc, 0, second.describe())
        self.assertIsNotNone(out2.resumed, f'no "resumed from" line\n{second.describe()}')
        r_step, r_epoch, r_pos, r_opt = out2.resumed
        self.assertEqual(r_step, S, second.describe())
        self.assertGreaterEqual(r_step, last_printed)
        self.assertEqual(r_opt, str(S), 'Adam step count at resume')
        self.assertEqual((r_epoch, r_pos), epoch_position(S), 'position in the epoch at resume')
        self.assertEqual(out2.step_order, list(range(S + 1, MAX_STEPS + 1)),
                         'steps must continue at S+1 without gaps or repeats')
        self.assertEqual(out2.done, MAX_STEPS)
        self.assertEqual(out2.saved[-1], MAX_STEPS)
        # Same data order and state: the steps the killed run did after S come
        # out with the same losses, and every step matches the uninterrupted run.
        redone = [s for s in out1.step_order if s > S]
        self.assertEqual({s: out2.steps[s] for s in redone}, {s: out1.steps[s] for s in redone})
        self.assertEqual(out2.steps, {s: ref['out'].steps[s] for s in out2.steps})
        self.assertEqual({s: out1.steps[s] for s in out1.steps},
                         {s: ref['out'].steps[s] for s in out1.steps})

        final = load_checkpoint(latest, logdir)
        self.assertEqual(final['step'], MAX_STEPS)
        self.assertEqual(adam_steps(final), {MAX_STEPS})
        self.assertEqual(sorted(final['model']), sorted(ref['ckpt']['model']))
        for k, v in final['model'].items():
            self.assertTrue(torch.equal(v, ref['ckpt']['model'][k]), f'{label}: weight {k} differs')
        print(f'\n{label}: first run killed at step {killed_at} after {ran:.1f}s '
              f'(saves printed: {out1.saved}); resumed from step={S}, redid {len(redone)} steps; '
              f'{[line for line in out2.lines if line.startswith("trained ")]}', file=sys.stderr)
        return out2, sha256_file(copy_out(latest, logdir))

    def test_resume_with_checkpoints_in_local_dir(self):
        ckdir = os.path.join(testlib.make_tmpdir('shelbyfs-train-ckpt-'), 'run1')
        # Data from the mount; checkpoints=off keeps the mount's checkpoint store out of it.
        with testlib.Mount(G['url'], options=['checkpoints=off']) as m:
            self.kill_and_resume(m.path('samples'), ckdir, 'local checkpoint dir')

    def test_resume_with_checkpoints_in_mount(self):
        spool1 = testlib.make_tmpdir('shelbyfs-spool-')
        spool2 = testlib.make_tmpdir('shelbyfs-spool-')
        opts = [f'checkpoints={G["nginx"].url("checkpoints/")}']
        with testlib.Mount(G['url'], options=opts + [f'spool_dir={spool1}']) as m:
            _, want = self.kill_and_resume(m.path('samples'), m.path('checkpoints/run1'),
                                           'checkpoints in the mount')
        tmp = testlib.make_tmpdir('shelbyfs-train-fresh-')
        self.addCleanup(shutil.rmtree, tmp, True)
        with testlib.Mount(G['url'], options=opts + [f'spool_dir={spool2}']) as fresh:
            r = testlib.read_in_subprocess(fresh.path('checkpoints/run1/latest.pt'), timeout=60)
            self.assertEqual(r.kind, 'ok', f'a fresh mount cannot read checkpoints/run1/latest.pt: {r}')
            self.assertEqual(r.sha256, want, 'latest.pt differs on a fresh mount')
            ck = load_checkpoint(fresh.path('checkpoints/run1/latest.pt'), tmp)
            self.assertEqual(ck['step'], MAX_STEPS)
            self.assertEqual(adam_steps(ck), {MAX_STEPS})


if __name__ == '__main__':
    testlib.require_prereqs(extra_modules=('numpy', 'PIL', 'torch', 'torchvision'))
    unittest.main(verbosity=2)

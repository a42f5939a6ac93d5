"""Train a model pair on your own pictures in one command: data, tokenizer, transformer, export, demo.

    python train.py --data path/to/folder --name mine --budget 60      # or: make train DATA=path/to/folder
    python train.py --name mine --resume                               # continue after a stop or a failure

Fine-tunes the shipped pair (--base) on the folder: the tokenizer's decoder (its codes stay, so the shipped
transformer's vocabulary does), then the transformer on the folder's tokens; --budget (wall-clock minutes
for the whole run) sizes their steps from per-step costs measured here at the start. Everything goes to
runs/<name>/ (trainlib.py lists it); the folder of pictures is only read. Then:

    python inpainting.py --MaskGitConfig runs/mine/MaskGit.yml --image photo.png --mask hole.png
"""
import argparse
import json
import os
import sys
import time

_t = time.time()
import trainlib as tl  # noqa: E402  (torch and the models: a stage script's start costs about this much)
from utils import load_config, resolve_device  # noqa: E402
STARTUP_S = time.time() - _t
TRAINED = ('tokenizer', 'transformer')  # stages that --resume continues from their checkpoint


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--data', default=None, help='folder of pictures (recursive; top-level folders are classes)')
    p.add_argument('--name', default='mine', help='the run: everything goes to RUNS/NAME (default mine)')
    p.add_argument('--budget', type=float, default=60, help='wall-clock minutes for the whole run (default 60)')
    p.add_argument('--device', default='auto', help='cpu, cuda, cuda:N or auto (cuda when available)')
    p.add_argument('--resume', action='store_true', help='continue RUNS/NAME: finished stages are skipped')
    p.add_argument('--overwrite', action='store_true', help='replace the run in RUNS/NAME')
    p.add_argument('--base', default=tl.DEFAULT_BASE,
                   help=f'the MaskGit config of the pair to fine-tune (default {tl.DEFAULT_BASE}, unconditional)')
    p.add_argument('--max-epochs', type=int, default=tl.MAX_EPOCHS,
                   help=f'most passes over the pictures per stage (default {tl.MAX_EPOCHS}): a small folder stops '
                        f'there, under its budget')
    p.add_argument('--runs', default=os.path.join(tl.ROOT, 'runs'), help='the folder of runs (default runs/)')
    p.add_argument('--quiet', action='store_true', help="the stages' output to their logs only")
    args = p.parse_args(argv)
    if not tl.NAME_RE.match(args.name):
        p.error(f"--name {args.name!r}: letters, digits, '.', '_' and '-' only (a folder name under {args.runs})")
    if not args.budget > 0 or args.max_epochs < 1:
        p.error("--budget must be > 0 minutes and --max-epochs >= 1")
    if not args.resume and not args.data:
        p.error("--data is required (the folder of pictures), except with --resume")
    return args


# ----------------------------------------------------------------------------- checks, before any output

def check_data(args, paths, state):
    """The folder of pictures (absolute) and its picture count; refused in one line when missing, too small,
    or overlapping the run folder (--overwrite would delete it, and the data would read itself)."""
    data = args.data and os.path.abspath(args.data)
    if state is not None:  # --resume: the run's own folder
        if data and os.path.realpath(data) != os.path.realpath(state['data']):
            raise ValueError(f"--data {args.data}: {paths.run} was trained on {state['data']}; give that folder, "
                             f"or another --name")
        if os.path.abspath(args.base) != os.path.abspath(state['base']):
            raise ValueError(f"--base {args.base}: {paths.run} fine-tunes {state['base']}; give that one, or "
                             f"another --name")
        return state['data'], state['pictures']
    if not os.path.isdir(data):
        raise FileNotFoundError(f"--data {args.data}: no such folder")
    if tl.inside(paths.run, data) or tl.inside(data, paths.run):
        raise ValueError(f"--data {args.data} and the run folder {paths.run} overlap: put the pictures elsewhere or "
                         f"give --runs another folder")
    n = tl.count_pictures(data)
    if n < tl.MIN_PICTURES:
        raise ValueError(f"--data {args.data} has {n} readable pictures; train.py needs at least {tl.MIN_PICTURES} "
                         f"(a train, a val and a test split)")
    return data, n


def data_counts(paths):
    """(train, val, test) images prepare_dataset.py wrote; too few to train is one line."""
    with open(os.path.join(paths.data, 'summary.json')) as f:
        s = json.load(f)
    counts = s['train'], s['val'], s['test']
    if counts[0] < tl.MIN_TRAIN or counts[1] < 1:
        raise ValueError(f"after dropping duplicates and unreadable files {tl.shown(paths.data)} has {counts[0]} train "
                         f"and {counts[1]} val images: add pictures, then rerun with --overwrite")
    return counts


# ----------------------------------------------------------------------------- the run

class Run:
    """One invocation: the paths, the state file, the clock and the budget."""

    def __init__(self, args, paths, state, t0):
        self.args, self.paths, self.state, self.t0 = args, paths, state, t0

    def time_left(self):
        return 60 * self.args.budget - (time.time() - self.t0)

    def done(self, stage):
        return stage in self.state['done']

    def stage(self, stage, make_argv):
        """Run a stage unless it finished earlier. make_argv() -> (flags, note) starts it; a training stage that
        saved a checkpoint in an earlier start continues from it with that start's flags."""
        if self.done(stage):
            print(f"== {stage}: finished earlier, skipped")
            return
        argv = tl.resumed(stage, self.state['started'].get(stage), self.paths) if stage in TRAINED else None
        note = ' (continuing the earlier start)'
        if argv and stage == 'transformer' and tl.trained_through(argv, self.paths):
            print(f"== {stage}: its last epoch was saved before the stop: finished")
            return self.finish(stage, time.time())
        if argv is None:
            argv, note = make_argv()
            self.state['started'][stage] = argv
            tl.write_state(self.paths, self.state)
        log = self.paths.log(stage)
        print(f"== {stage}{note}: log {tl.shown(log)}", flush=True)
        t = time.time()
        tl.run_stage(stage, argv, log, self.args.quiet)
        self.finish(stage, t)

    def finish(self, stage, t):
        self.state['done'].append(stage)
        self.state['seconds'][stage] = round(time.time() - t, 1)
        tl.write_state(self.paths, self.state)
        summary = tl.stage_summary(stage, self.paths)
        print(f"   {stage} done in {(time.time() - t) / 60:.1f} min" + (f": {summary}" if summary else ''), flush=True)

    def plan(self, stage, counts, costs, mg):
        """The stage's StagePlan from the time left now (the stages before it took what they took)."""
        p = tl.plan(counts, costs, STARTUP_S, mg, self.time_left(), self.args.max_epochs, self.state['done'])[stage]
        return p, f": {p.steps} steps, {p.epochs} epoch(s) of {p.steps_per_epoch}, batch {p.batch}, ~{p.seconds / 60:.1f} min"


def train(args, t0):
    paths = tl.layout(os.path.join(os.path.abspath(args.runs), args.name))
    tl.check_run_folder(paths, args.resume, args.overwrite)
    state = tl.read_state(paths) if args.resume else None
    base_cfg, base_vq_cfg, base_vq, base_tr = tl.base_pair(args.base)
    data, n = check_data(args, paths, state)
    try:
        device = str(resolve_device(args.device))
    except RuntimeError as e:
        raise ValueError(str(e)) from None
    vq_cfg = load_config(base_vq_cfg)
    counts = tuple(state['counts']) if state and state.get('counts') else tl.split_counts(n)
    costs = tl.measure_costs(vq_cfg['model_param'], base_cfg['model_param'],
                             (vq_cfg.get('train') or {}).get('batch_size', 16),
                             (base_cfg.get('train') or {}).get('batch_size', 32), resolve_device(device))
    done = state['done'] if state else []
    plan = tl.plan(counts, costs, STARTUP_S, base_cfg, 60 * args.budget - (time.time() - t0), args.max_epochs, done)

    print(f"train.py: {n} pictures in {data} -> {tl.shown(paths.run)} (train {counts[0]}, val {counts[1]}, test "
          f"{counts[2]}{', predicted' if not (state and state.get('counts')) else ''}); fine-tuning {args.base}; {device}")
    print(f"plan for --budget {args.budget:g} min (measured here: tokenizer step {costs['vq_step']:.2f} s, transformer "
          f"step {costs['tr_step']:.2f} s; each script starts in ~{STARTUP_S:.0f} s):")
    for stage in tl.STAGES:
        if stage in plan:
            print(tl.describe(stage, plan[stage]))
    total = sum(p.seconds if isinstance(p, tl.StagePlan) else p for p in plan.values())
    print(f"  total ~{total / 60:.1f} min; the training stages are re-sized from the time left when they start",
          flush=True)

    if args.overwrite and os.path.isdir(paths.run):
        tl.remove_run(paths)
    if state is None:
        state = dict(data=data, base=os.path.abspath(args.base), pictures=n, budget=args.budget, device=device,
                     done=[], started={}, seconds={})
        os.makedirs(paths.run, exist_ok=True)
        tl.write_state(paths, state)
    vq_run, mg_run = tl.run_configs(base_cfg, base_vq_cfg, paths)
    tl.write_config(vq_run, paths.vqgan_cfg, base_vq_cfg)
    tl.write_config(mg_run, paths.maskgit_cfg, args.base)
    run = Run(args, paths, state, t0)

    run.stage('data', lambda: (tl.prepare_args(data, paths, n, vq_cfg['model_param']['img_resolution']), ''))
    counts = state['counts'] = list(data_counts(paths))
    tl.write_state(paths, state)

    def tokenizer():
        p, note = run.plan('tokenizer', counts, costs, base_cfg)
        minutes = max(1.5 * (p.seconds - STARTUP_S) / 60, 0.5)  # a hard stop, should the estimate be short
        return tl.tokenizer_args(paths, base_vq, p, device, minutes), note

    def transformer():
        p, note = run.plan('transformer', counts, costs, base_cfg)
        return tl.transformer_args(paths, base_tr, p, device, 0 if counts[0] < 1000 else 2), note

    best = tl.shown(os.path.join(paths.tokenizer, 'best.pt'))
    state_pt = tl.shown(os.path.join(paths.transformer, 'train_state.pt'))
    run.stage('tokenizer', tokenizer)
    run.stage('tokenizer_export', lambda: (['training_vqgan.py', '--export', best, '--out', tl.shown(paths.vqgan),
                                            '--overwrite'], ''))
    run.stage('transformer', transformer)
    run.stage('transformer_export', lambda: (['training_transformer.py', '--export', state_pt, '--out',
                                              tl.shown(paths.transformer_ckpt), '--overwrite'], ''))
    d = lambda sub: tl.shown(os.path.join(paths.data, sub))
    run.stage('demo', lambda: (['inpainting.py', '--MaskGitConfig', tl.shown(paths.maskgit_cfg),
                                '--test-maskedimage-path', d('masked_image'), '--test-mask-path', d('mask64'),
                                '--paste-known', '--gallery', str(min(8, counts[2])), '--gt-path', d('test'),
                                '--output-dir', tl.shown(paths.demo), '--device', device, '--overwrite'], ''))

    cfg = tl.shown(paths.maskgit_cfg)
    here = '' if os.path.realpath(os.getcwd()) == os.path.realpath(tl.ROOT) else f"cd {tl.ROOT} && "
    print(f"\ndone in {(time.time() - t0) / 60:.1f} min: {tl.shown(paths.vqgan)} + {tl.shown(paths.transformer_ckpt)}"
          f" (config {cfg})")
    print(f"demo on the test split: {tl.shown(os.path.join(paths.demo, 'gallery.png'))} "
          f"(input | decoding steps | result | OpenCV Telea | ground truth)")
    print("use the pair:")
    print(f"  {here}python inpainting.py --MaskGitConfig {cfg} --image photo.png --mask hole.png")
    print(f"  {here}python -c \"from pipeline import load; load('{cfg}').inpaint('photo.png', 'hole.png')"
          f".save('out.png')\"")
    return 0


def main(argv=None):
    t0 = time.time()
    args = parse_args(argv)
    try:
        return train(args, t0)
    except (ValueError, FileNotFoundError) as e:  # bad input: one line, nothing written
        print(f"train.py: {e}", file=sys.stderr)
        return 2
    except tl.StageFailed as e:
        print(f"train.py: {e}; fix it, then rerun with --resume", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ntrain.py: interrupted; rerun with --name {args.name} --resume to continue", file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())

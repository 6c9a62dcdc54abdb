"""Makes the keras_fit tables' runs again for a candidate default, resumably, across sessions.

    python experiments/remake.py --default_nets=experiments/candidates/drift-net2
    python experiments/remake.py --default_nets=... --shard=0/2   # and --shard=1/2, beside it
    python experiments/remake.py --default_nets=... --dry_run     # the ledger only

Every cached run of `default` in a table's `_runs.json` is keyed by the shipped default's
nets fingerprint, so shipping other nets leaves every table's `default` column to be run
again: 1,250 runs and about 18 hours of `fit` on this machine in session 49, more than a
session holds. This runs, for each `keras_fit*.md` in --results, the table's own command
(its first line) with `--default_nets=<candidate> --runs_only`: the candidate's runs go into
the table's cache under the keys the shipped default will have once the candidate ships, and
no table changes until then (keras_fit.py, --runs_only). Killed at any point, the same
command goes on where it stopped, since keras_fit.py saves each run as it ends. Tables share
runs (the same model, seed and flags in two tables: a run's key names everything its numbers
depend on), so before a table runs, the candidate's runs it lacks that another table's cache
holds are copied into its cache, those of the candidate's own tables too (made with its
directory in --optimizers, keyed by that path): no run is made twice.

The ledger it prints counts, per table, the cached runs of the shipped default and how many
of those have the candidate's run beside them; of those pairs, how many are the same to the
bit (every stored number but the seconds), and the mean of log(the candidate's validation
loss / the shipped default's) after the last epoch, the split a candidate is judged on (the
test loss is the tables' to show once it ships); "minutes left" is the `fit` time the
shipped default's runs without one took when they were made. Tables run cheapest first, so an
interrupted remake has finished the most tables. A cached run that a table's command no
longer asks for (a model dropped from it, an LSTM's initial weights drawn on another machine)
stays in the count: the remake leaves such a table with runs "left" that no command makes.
Two processes must not write one cache: --shard=i/n splits the tables between n processes.
"""

import quiet_tensorflow  # noqa: F401  (first: silences TensorFlow's start-up lines)

import collections
import glob
import json
import math
import os
import re
import shlex
import subprocess
import sys

from absl import flags

from l2l_tf import cli, networks, presets

EXPERIMENTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(EXPERIMENTS)
COMMAND_PREFIX = "python experiments/keras_fit.py "

flags.DEFINE_string("default_nets", None, "The candidate default: a directory of nets, as "
                    "keras_fit.py's --default_nets takes it.")
flags.DEFINE_string("results", os.path.join("experiments", "results"),
                    "Where the keras_fit*.md tables and their _runs.json caches are.")
flags.DEFINE_string("shard", "0/1", "i/n: remake only every n-th table with runs left, "
                    "starting at the i-th (0-based), so that n processes share the work.")
flags.DEFINE_bool("dry_run", False, "Print the ledger and run nothing.")
FLAGS = flags.FLAGS


def table_flags(table_path):
    """The flags of the keras_fit.py command on the table's first line, or None for a table
    made by another script."""
    with open(table_path) as f:
        first_line = f.readline().strip()
    command = first_line.removeprefix("Command: `").removesuffix("`")
    if not command.startswith(COMMAND_PREFIX):
        return None
    return shlex.split(command[len(COMMAND_PREFIX):])


def cache_path(flags_of_table):
    """The table's `_runs.json`, as keras_fit.py names it from the last --output."""
    outputs = [f.split("=", 1)[1] for f in flags_of_table if f.startswith("--output=")]
    return outputs[-1][: -len(".md")] + "_runs.json" if outputs else None


def candidate_twin(key, shipped, candidate):
    """The key the candidate's run has beside a cached run of the shipped default (nets
    fingerprints `shipped` and `candidate`), or None for a key of another run."""
    model_name, label, *rest = key.split("|")
    if label.split(" ")[0] != "default" or rest[-1] != f"nets {shipped}":
        return None
    return "|".join([model_name, label, *rest[:-1], f"nets {candidate}"])


# One table's line of the ledger: its name, its command's flags, its cache's path, and
# `count_runs` of that cache.
LedgerRow = collections.namedtuple("LedgerRow", [
    "name", "flags", "path", "runs", "remade", "seconds_left", "identical", "log_ratios"])


def count_runs(cache, shipped, candidate):
    """(runs of the shipped default, those with the candidate's run beside them, seconds of
    `fit` the rest took, how many of the pairs are the same in every number but the seconds,
    and per pair log(candidate's / shipped's validation loss) after the last epoch)."""
    twins = {key: candidate_twin(key, shipped, candidate) for key in cache}
    remade = [(key, twin) for key, twin in twins.items() if twin in cache]
    left = [key for key, twin in twins.items() if twin is not None and twin not in cache]
    return (len(remade) + len(left), len(remade),
            sum(epoch["seconds"] for key in left for epoch in cache[key]),
            sum(without_seconds(cache[key]) == without_seconds(cache[twin])
                for key, twin in remade),
            [math.log(candidate_loss / shipped_loss)
             for shipped_loss, candidate_loss in (
                 (cache[key][-1]["validation_loss"], cache[twin][-1]["validation_loss"])
                 for key, twin in remade)
             if shipped_loss > 0 and candidate_loss > 0])


def without_seconds(run):
    """A run's epochs without their wall times, the one thing two runs of the same
    computation differ in."""
    return [{name: value for name, value in epoch.items() if name != "seconds"}
            for epoch in run]


def as_default(key, candidate):
    """The key a run of the candidate's nets under another name (its directory's path, in
    the candidate's own tables) has once the candidate ships as `default`: the nets' files
    alone make the optimizer (`from_pretrained`), so the run is the same. Other keys are
    returned as they are."""
    model_name, label, *rest = key.split("|")
    name_and_rate = re.fullmatch(r"(.+?) (-?[0-9.]+(?:e[-+][0-9]+)?(?:, .*)?)", label)
    if rest[-1] != f"nets {candidate}" or name_and_rate is None:
        return key
    return "|".join([model_name, f"default {name_and_rate.group(2)}", *rest])


def borrow_runs(path, shipped, candidate, results):
    """Copies into the cache at `path` the candidate's runs that other caches in `results`
    hold under the keys it lacks (tables share runs: a key names everything a run's numbers
    depend on), the candidate's own tables' runs under its path included, so that no run is
    made twice; returns how many, and how many the table still lacks."""
    with open(path) as f:
        cache = json.load(f)
    elsewhere = {}
    for other in glob.glob(os.path.join(results, "*_runs.json")):
        with open(other) as f:
            elsewhere.update((as_default(key, candidate), run)
                             for key, run in json.load(f).items())
    lacking = [twin for twin in (candidate_twin(key, shipped, candidate) for key in cache)
               if twin is not None and twin not in cache]
    borrowed = {twin: elsewhere[twin] for twin in lacking if twin in elsewhere}
    if borrowed:
        cli.write_text_atomically(path, json.dumps({**cache, **borrowed}, indent=0))
    return len(borrowed), len(lacking) - len(borrowed)


def ledger(results, shipped, candidate):
    """A `LedgerRow` for every keras_fit table in `results`, cheapest first."""
    rows = []
    for table_path in sorted(glob.glob(os.path.join(results, "keras_fit*.md"))):
        flags_of_table = table_flags(table_path)
        if flags_of_table is None:
            continue
        cache = {}
        path = cache_path(flags_of_table)
        path = path and os.path.join(ROOT, path)  # the commands' paths are the checkout's
        if path and os.path.exists(path):
            with open(path) as f:
                cache = json.load(f)
        rows.append(LedgerRow(os.path.basename(table_path)[: -len(".md")], flags_of_table,
                              path, *count_runs(cache, shipped, candidate)))
    return sorted(rows, key=lambda row: (row.seconds_left, row.name))


def print_ledger(rows):
    print("| table | runs of the shipped default | remade | remade the same to the bit | "
          "validation loss of the remade runs, mean log(candidate's / shipped's), last epoch "
          "| minutes left |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row.name} | {row.runs} | {row.remade} | {row.identical} | "
              f"{mean_text(row.log_ratios)} | {row.seconds_left / 60:.1f} |")
    print(f"| all {len(rows)} | {sum(row.runs for row in rows)} | "
          f"{sum(row.remade for row in rows)} | {sum(row.identical for row in rows)} | "
          f"{mean_text([r for row in rows for r in row.log_ratios])} | "
          f"{sum(row.seconds_left for row in rows) / 60:.1f} |")


def mean_text(log_ratios):
    return f"{sum(log_ratios) / len(log_ratios):+.4f}" if log_ratios else "-"


def parse_shard():
    try:
        index, count = (int(part) for part in FLAGS.shard.split("/"))
    except ValueError:
        index, count = -1, 0
    if not 0 <= index < count:
        raise cli.UsageError(f"--shard={FLAGS.shard} must be i/n with 0 <= i < n, e.g. 0/2 "
                             "and 1/2 for two processes.")
    return index, count


def main(argv):
    del argv
    if FLAGS.default_nets is None:
        raise cli.UsageError("--default_nets is the candidate to make the runs for: give its "
                             "directory, e.g. --default_nets=experiments/candidates/<name>.")
    index, count = parse_shard()
    if not os.path.exists(FLAGS.default_nets):
        raise cli.UsageError(f"--default_nets={FLAGS.default_nets} does not exist: give the "
                             "candidate's directory of nets, e.g. experiments/candidates/<name>.")
    with cli.configuration_errors():
        candidate = networks.nets_fingerprint(FLAGS.default_nets)
    shipped = networks.nets_fingerprint(presets.pretrained_path(presets.DEFAULT_PRETRAINED))
    if candidate == shipped:
        raise cli.UsageError(f"--default_nets={FLAGS.default_nets} holds the shipped "
                             "default's nets: its runs are the tables' own; nothing to remake.")
    if not os.path.isdir(FLAGS.results):
        raise cli.UsageError(f"--results={FLAGS.results} is not a directory: give the one "
                             "holding the keras_fit*.md tables.")
    rows = ledger(FLAGS.results, shipped, candidate)
    print(f"Shipped default nets {shipped}, candidate {candidate} ({FLAGS.default_nets}):")
    print_ledger(rows)
    mine = [row for row in rows if row.remade < row.runs][index::count]
    if FLAGS.dry_run:
        return
    for name, flags_of_table, path, *_ in mine:
        borrowed, lacking = borrow_runs(path, shipped, candidate, FLAGS.results)
        if not lacking:  # no keras_fit.py to start (TensorFlow's import, the data's load)
            print(f"Remade {name} from other tables' caches ({borrowed} runs).", flush=True)
            continue
        print(f"Remaking {name} ({borrowed} of its runs copied from other tables' caches) ...",
              flush=True)
        result = subprocess.run(
            [sys.executable, os.path.join(EXPERIMENTS, "keras_fit.py"), *flags_of_table,
             f"--default_nets={os.path.abspath(FLAGS.default_nets)}", "--runs_only"],
            cwd=ROOT)
        if result.returncode != 0:
            sys.exit(f"keras_fit.py failed on {name} (exit {result.returncode}); its runs made "
                     "so far are cached: fix the cause and run the same command again.")
    print("After the remake:")
    print_ledger(ledger(FLAGS.results, shipped, candidate))


if __name__ == "__main__":
    cli.run(main)

"""Several processes for one training: `tts-pipeline train` re-executes itself through `accelerate launch`.

The process count is `--num-processes`, else `training.num_processes`, else every visible CUDA
GPU (1 without CUDA). Above 1, and unless this process already is a launched worker (torch's
launcher sets `LOCAL_RANK`/`RANK`/`WORLD_SIZE`), `train` runs

    <this python> -m accelerate.commands.launch --multi_gpu --num_processes N --num_machines 1
        --mixed_precision P --dynamo_backend no --main_process_port <free> -m tts_pipeline train <same args>

and returns its exit code, so `dvc repro` and `tts-pipeline run` use every GPU with no extra
step. Without CUDA the workers join with gloo (accelerate's MULTI_CPU): the same code path,
which is how the tests exercise it. Ctrl-C (SIGINT), SIGTERM and SIGHUP reach every worker.

Batches are sharded by process (`vits.data.epoch_batches`), so one optimiser step sees
`batch_size x gradient_accumulation_steps x num_processes` clips. Learning-rate rule: none
automatic. `training.learning_rate` is used as configured whatever the process count (GAN
training does not follow the linear scaling rule reliably; the warm-up is in steps and the decay
per epoch, so an epoch's schedule is unchanged). Both the rule and the effective batch are logged
and written to training_info.json; scale the learning rate yourself when you change the count.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import PipelineError

log = logging.getLogger(__name__)

#: Set by torch's launcher (what `accelerate launch` uses) in every worker process.
WORKER_ENV = ("LOCAL_RANK", "RANK", "WORLD_SIZE")
LR_SCALING = "none (training.learning_rate as configured, whatever the process count)"
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--num-processes", "--num_processes", dest="num_processes", type=int, default=None, metavar="N",
        help="processes (GPUs) to train on through `accelerate launch` "
        "(default: training.num_processes, else every visible GPU, 1 on CPU)",
    )  # fmt: skip


def inside_worker(env: Mapping[str, str] | None = None) -> bool:
    """True in a process started by `accelerate launch` / torchrun (ours or the user's)."""
    env = os.environ if env is None else env
    return any(env.get(name) for name in WORKER_ENV)


def is_main_worker(env: Mapping[str, str] | None = None) -> bool:
    """True outside a launch and in rank 0 of one: the process that reports to the user."""
    env = os.environ if env is None else env
    return env.get("RANK", "0") in ("", "0")


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_num_processes(
    flag: int | None, setting: int | None, gpus: int, where: str = "training.num_processes"
) -> int:
    """The process count: the flag, else the setting, else every visible GPU (1 without CUDA)."""
    requested = flag if flag is not None else setting
    if requested is None:
        return max(1, gpus)
    source = "--num-processes" if flag is not None else where
    if requested < 1:
        raise PipelineError(f"{source}: {requested} processes; give 1 or more")
    if gpus and requested > gpus:
        raise PipelineError(
            f"{source}: {requested} processes but only {gpus} GPU(s) are visible; "
            f"use at most {gpus} (or null for all of them)"
        )
    return requested


def free_port() -> int:
    """A free TCP port on this machine for the workers' rendezvous (not the busy default 29500)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch_command(
    num_processes: int, mixed_precision: str, train_argv: Sequence[str], port: int
) -> list[str]:
    """`accelerate launch` with this interpreter, running `tts_pipeline <train_argv>` in each worker."""
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1",
        "--mixed_precision", mixed_precision, "--dynamo_backend", "no",
        "--main_process_port", str(port),
        "-m", "tts_pipeline", *train_argv,
    ]  # fmt: skip


def train_argv(args: argparse.Namespace, config: str, params: str | None) -> list[str]:
    """The `train` command line the workers run: the same arguments, the count left to the launch."""
    argv = ["train", "--config", config, "--log-level", getattr(args, "log_level", None) or "INFO"]
    if params:
        argv += ["--params", params]
    for name in ("dataset_path", "output_dir", "checkpoint_dir", "metrics_file"):
        value = getattr(args, name, None)
        if value:
            argv += [f"--{name}", str(value)]
    resume = getattr(args, "resume", None)
    if resume is not None:
        argv.append("--resume" if resume else "--no-resume")
    if getattr(args, "force", False):
        argv.append("--force")
    return argv


def run_forwarding_signals(command: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    """Run `command` in its own process group, passing SIGINT/SIGTERM/SIGHUP on to the whole
    group, and return its exit status (128 + signal number when a signal ended it)."""
    child = subprocess.Popen(
        list(command), env=dict(env) if env is not None else None, start_new_session=True
    )

    def forward(signum: int, _frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.killpg(child.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code if code >= 0 else 128 - code


def relaunch_if_needed(cfg, args: argparse.Namespace) -> int | None:
    """Re-execute `train` through `accelerate launch` when more than one process is asked for:
    the launch's exit code. None when this process trains itself (one process, or a worker)."""
    if inside_worker():
        prepare_worker()
        return None
    gpus = visible_gpus()
    origin = cfg.origins.get("training.num_processes")
    where = f"{origin}: training.num_processes" if origin else "training.num_processes"
    count = resolve_num_processes(
        getattr(args, "num_processes", None), cfg.training.num_processes, gpus, where
    )
    if count == 1:
        return None
    precision = cfg.training.mixed_precision
    if precision == "fp16" and not gpus:
        precision = "no"  # as make_accelerator does: fp16 needs CUDA
    argv = train_argv(
        args, str(cfg.config_path), str(cfg.params_path) if getattr(args, "params", None) else None
    )
    command = launch_command(count, precision, argv, free_port())
    log.info("training on %d %s through accelerate launch (each process takes 1 batch in %d)",
             count, "GPUs" if gpus else "CPU processes (gloo)", count)  # fmt: skip
    log.debug("launch: %s", " ".join(command))
    env = dict(os.environ)
    if not gpus:  # accelerate's MULTI_CPU (gloo) only when told the workers are CPU ones
        env["ACCELERATE_USE_CPU"] = "true"
    code = run_forwarding_signals(command, env)
    if code:
        log.error("the %d training processes ended with exit code %d", count, code)
    return code


def prepare_worker() -> None:
    """In workers other than rank 0: only warnings and errors, so the log reads once."""
    if not is_main_worker():
        logging.getLogger("tts_pipeline").setLevel(logging.WARNING)


def scale_summary(batch_size: int, accumulation: int, num_processes: int) -> dict[str, Any]:
    """What one optimiser step consumes and the learning-rate rule (training_info.json, the log)."""
    return {
        "num_processes": num_processes,
        "effective_batch_size": batch_size * accumulation * num_processes,
        "learning_rate_scaling": LR_SCALING,
    }

"""Logged models: each repetition's network as an MLflow 3 logged model, and the registry.

A repetition's model is `benchmark.train.RawImages` around the trained network: it takes
uint8 images (N, 3, 32, 32), as CIFAR-10 stores them, and returns the 10 logits, so loading
it needs no tailbench code. It is saved with `torch.export` (`serialization_format="pt2"`,
no pickle: loading it runs no code from the file), with a signature and an input example of
two test images, on the CPU in fp32, and linked to the repetition's test metrics (logged
with the model's id after it: tracking.runs.RunLog.log_model). The cnn, the rnn and
ResNet-50 all export (ResNet-32 too: its torch.export matches it on two images; the suite logs
the cnn).
"""

from __future__ import annotations

import copy
import os
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import mlflow
import torch
from mlflow import MlflowClient
from mlflow.models import infer_signature

from benchmark.errors import UserError

FORMAT = "pt2"
# one logged model at a time in a process: torch.export is not thread-safe (two threads
# exporting at once break its tracer), and MLflow's fluent calls share the process's tracking
# URI; workers are processes, but threads can share one
_LOGGING = threading.Lock()
URI_VARIABLE = "MLFLOW_TRACKING_URI"
TORCH_REQUIREMENT = f"torch=={torch.__version__.split('+')[0]}"


@contextmanager
def tracking_uri(uri: str) -> Iterator[None]:
    """The process's MLflow tracking URI set to `uri` for the fluent calls inside (log_model
    and register_model read it), and put back after: `mlflow.set_tracking_uri` also sets
    MLFLOW_TRACKING_URI in the environment, which would point every later store lookup of
    the process, and its child processes, at this store."""
    env, before = os.environ.get(URI_VARIABLE), mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)
        if env is None:
            os.environ.pop(URI_VARIABLE, None)
        else:
            os.environ[URI_VARIABLE] = env


def log_model(client: MlflowClient, run_id: str, model: torch.nn.Module, example: torch.Tensor,
              tags: dict[str, object]) -> str:
    """Log `model` (fed `example`, a few uint8 images) as the run's logged model; its id."""
    net = copy.deepcopy(model).cpu().eval()  # a GPU-trained model loads on any machine
    x = example[:2].cpu()
    with torch.inference_mode():
        out = net(x)
    with _LOGGING, tracking_uri(client.tracking_uri), warnings.catch_warnings():
        # torch.export's packager, on weights that are on the CPU
        warnings.filterwarnings("ignore", "No complete tensor found in the group")
        # nn.RNN re-assigns its flat weight list when traced: harmless for an exported copy
        warnings.filterwarnings("ignore", "The tensor attributes .* were assigned during export")
        info = _log(net, x, out, _logged_model(client, run_id, tags), run_id)
    _check_whole(client, info.model_id, sum(p.numel() * p.element_size()
                                            for p in net.parameters()))
    return info.model_id


def _check_whole(client: MlflowClient, model_id: str, weights: int) -> None:
    """The store holds the model's MLmodel and at least its weights' bytes (a copy cut short
    by a full disk or a lost connection is an error, and the run does not end FINISHED)."""
    sizes: dict[str, int] = {}
    folders = [None]
    while folders:
        for info in client.list_logged_model_artifacts(model_id, folders.pop()):
            if info.is_dir:
                folders.append(info.path)
            else:
                sizes[info.path] = info.file_size or 0
    if "MLmodel" not in sizes or sum(sizes.values()) < weights:
        raise OSError(f"logged model {model_id}: the store holds {sum(sizes.values())} bytes "
                      f"in {len(sizes)} files, less than its {weights} bytes of weights")


def _logged_model(client: MlflowClient, run_id: str, tags: dict) -> str:
    """The logged model's entry, in the run's experiment (log_model alone would put it in
    the process's active experiment, "Default", away from the run's Models column)."""
    run = client.get_run(run_id)
    return client.create_logged_model(run.info.experiment_id, name="model", source_run_id=run_id,
                                      tags={k: str(v) for k, v in tags.items()},
                                      params=dict(run.data.params)).model_id


def _log(net: torch.nn.Module, x: torch.Tensor, out: torch.Tensor, model_id: str, run_id: str):
    return mlflow.pytorch.log_model(
        net, name="model", model_id=model_id, run_id=run_id, serialization_format=FORMAT,
        signature=infer_signature(x.numpy(), out.numpy()), input_example=x.numpy(),
        pip_requirements=[TORCH_REQUIREMENT],  # not inferred: that loads the model once more
        validate_serving_input=False)  # the test suite loads it back and checks its accuracy


class RegistryError(UserError, LookupError):
    """The cell or repetition asked for has no logged model."""


def registered_name(cell_name: str) -> str:
    """"cnn · long-tail · flip+noise" -> "tailbench-cnn-long-tail-flip-noise"."""
    return "tailbench-" + re.sub(r"[^A-Za-z0-9]+", "-", cell_name).strip("-").lower()


def model_of(client: MlflowClient, repetition_run) -> str:
    """The id of the logged model a repetition run output."""
    outputs = repetition_run.outputs.model_outputs if repetition_run.outputs else []
    if not outputs:
        raise RegistryError(f"repetition run {repetition_run.info.run_id} logged no model "
                            "(trained before tailbench logged models, or did not learn)")
    return outputs[-1].model_id


def register(client: MlflowClient, model_id: str, name: str, tags: dict[str, object]):
    """A new version of registered model `name` from the logged model; the ModelVersion."""
    with tracking_uri(client.tracking_uri):
        return mlflow.register_model(f"models:/{model_id}", name,
                                     tags={k: str(v) for k, v in tags.items()})

"""``retain residual``: add an instruction residual to a continually pretrained model.

Jindal et al. (2024, "Balancing Continuous Pre-Training and Instruction Fine-Tuning") observe that
θ_instruct − θ_base, the change instruction tuning made to a base model, transfers to a newer base:
``target + α·(instruct − base)`` follows instructions like ``instruct`` while knowing what ``target``
learnt in continued pretraining, without any instruction data. ``merge_residual`` computes exactly that.

The three inputs are transformers model folders with safetensors weights. The merge works on the
checkpoint files, not on model objects, so it never holds more than one shard of the target (plus one
tensor of base and instruct) in memory and writes the same tensor names, dtypes and shards the target
has: whatever loads the target loads the result. Tied embeddings need nothing special: a tied tensor is
stored once, under the same name in all three (a checkpoint storing it twice does not match one storing
it once, and the check says so).

The weights and the architecture are the target's, but how the model is prompted and when it stops are the
instruct's: a Llama-3 or Qwen instruct model ends a turn with its own token and renders prompts with its own
chat template, and the merged model without them fails to follow instructions for reasons that have nothing to
do with the residual. So ``out`` gets

- the target's ``config.json``, with ``bos_token_id``, ``eos_token_id`` and ``pad_token_id`` replaced by the
  instruct's where the instruct's ``config.json`` sets them to other values;
- the instruct's ``generation_config.json`` (its stop ids, sampling defaults), else the target's;
- the instruct's tokenizer files as they are (vocabulary, added and special tokens, chat template), else the
  target's;
- ``residual.json``: the inputs, α, where each of these came from and per-tensor norms.

It is written in a temporary sibling folder and renamed into place, so a failure leaves nothing behind.

The ``retain residual`` job (``finetune/residual_job.py``) runs this merge, or with ``demo=true`` a small
offline experiment that shows the effect (``finetune/residual_demo.py``).
"""

from __future__ import annotations

import json
import math
import shutil
from contextlib import ExitStack, contextmanager
from pathlib import Path

from retain.errors import ConfigError
from retain.io import atomic_path

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
# A folder has a tokenizer when it has one of these; all of them, when present, make up the tokenizer that is copied.
VOCAB_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")
TOKENIZER_FILES = (
    *VOCAB_FILES,
    "merges.txt",
    "added_tokens.json",
    "special_tokens_map.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "additional_chat_templates",  # a folder of named templates (transformers >= 4.54)
)
SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")
# Config fields that may differ between a base, its instruct model and its continued pretraining without
# changing what the weights mean: names, versions, dtypes, special token ids (instruct models often add an
# end-of-turn id), the position limit (RoPE models; learned position tables differ in shape and are caught
# there) and init-only settings.
BENIGN_FIELDS = {
    "_name_or_path",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "use_cache",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "sep_token_id",
    "decoder_start_token_id",
    "max_position_embeddings",
    "initializer_range",
}
SAME_MODEL = "base must be the model instruct was tuned from, and target a continued pretraining of base"


# --- reading checkpoints -------------------------------------------------------------------------


@contextmanager
def _open(file: Path, role: str):
    """``safe_open`` with a missing or damaged file reported as a ConfigError."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(file, "pt") as f:
            yield f
    except (OSError, SafetensorError) as e:
        raise ConfigError(f"{role}: {file} cannot be read ({e})", "the checkpoint is incomplete or damaged") from e


def _weight_files(folder: Path, role: str) -> dict[str, Path]:
    """Each tensor name of the folder's safetensors checkpoint → the file that holds it."""
    if (folder / INDEX).exists():
        return {name: folder / file for name, file in json.loads((folder / INDEX).read_text())["weight_map"].items()}
    if (folder / SINGLE).exists():
        with _open(folder / SINGLE, role) as f:
            return dict.fromkeys(f.keys(), folder / SINGLE)  # noqa: SIM118
    raise ConfigError(
        f"{role}={folder} has no safetensors weights ({SINGLE} or {INDEX})",
        "save the model with save_pretrained(folder, safe_serialization=True)",
    )


def _header(files: dict[str, Path], role: str) -> dict[str, tuple[list[int], str]]:
    """Shape and dtype of every tensor, read from the file headers (no tensor data is read)."""
    out = {}
    for file in sorted(set(files.values())):
        with _open(file, role) as f:
            for name in f.keys():  # noqa: SIM118 (safe_open handles are not iterable)
                tensor = f.get_slice(name)
                out[name] = (list(tensor.get_shape()), tensor.get_dtype())
    return out


def _config(folder: Path, role: str) -> dict:
    from transformers import AutoConfig

    if not (folder / "config.json").exists():
        raise ConfigError(
            f"{role}={folder} is not a model folder (no config.json)", "pass a folder written by save_pretrained"
        )
    try:  # AutoConfig fills defaults, so configs written by different transformers versions compare equal
        return AutoConfig.from_pretrained(folder, trust_remote_code=False).to_dict()
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(
            f"{role}={folder}: config.json cannot be read ({type(e).__name__}: {str(e).splitlines()[0]})",
            "pass a transformers model folder of an architecture transformers knows (remote code is not trusted)",
        ) from e


def _json(file: Path, role: str) -> dict:
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{role}: {file} cannot be read ({e})", "the model folder is incomplete or damaged") from e


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / f).exists() for f in VOCAB_FILES)


def _vocab(folder: Path, role: str) -> dict[str, int]:
    """Token → id of the folder's tokenizer, added and special tokens included."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=False).get_vocab()
    except Exception as e:  # tokenizers reports a malformed tokenizer.json as a plain Exception
        raise ConfigError(
            f"{role}={folder}: the tokenizer cannot be read ({type(e).__name__}: {str(e).splitlines()[0]})",
            "pass a folder whose tokenizer loads with AutoTokenizer (remote code is not trusted)",
        ) from e


def _ids(value) -> list[int]:
    """The token ids a config field names (an id, a list of ids, or none)."""
    return [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, int)]


def check_tokenizer(base: Path, instruct: Path, target: Path, vocab_size: int | None) -> None:
    """ConfigError unless what the merged model takes from ``instruct`` fits the target's weights: every token of
    the target's tokenizer (else the base's) has the same id in the instruct's, and every id of the instruct's
    tokenizer and the special token ids of its config and generation config are below ``vocab_size``."""
    ids: dict[str, int] = {}
    if _has_tokenizer(instruct):
        vocab = _vocab(instruct, "instruct")
        reference = {"target": target, "base": base}
        ref_role = next((r for r, f in reference.items() if _has_tokenizer(f)), None)
        ref_vocab = _vocab(reference[ref_role], ref_role) if ref_role is not None else {}
        for token, i in sorted(ref_vocab.items(), key=lambda kv: kv[1]):
            if vocab.get(token) != i:
                found = "lacks it" if token not in vocab else f"has it as id {vocab[token]}"
                raise ConfigError(
                    f"the {ref_role}'s tokenizer has token {token!r} as id {i}, the instruct's {found}",
                    "the instruct's tokenizer must keep the base's vocabulary and ids (it may add tokens): "
                    + SAME_MODEL,
                )
        ids |= {f"tokenizer token {token!r}": i for token, i in vocab.items()}
    for file in ("config.json", "generation_config.json"):
        if (instruct / file).exists():
            fields = _json(instruct / file, "instruct")
            ids |= {f"{file} {key}": i for key in SPECIAL_IDS for i in _ids(fields.get(key))}
    for what, i in ids.items() if vocab_size is not None else ():
        if not 0 <= i < vocab_size:
            raise ConfigError(
                f"the instruct's {what} is id {i}, outside the embedding's {vocab_size} rows (vocab_size)",
                "every token id must be a row of the embedding: the instruct's tokenizer or config does not fit "
                "its weights (an added token needs resize_token_embeddings, in base and target too)",
            )


def check_inputs(
    base: Path, instruct: Path, target: Path, out: Path, alpha: float = 1.0, overwrite: bool = False
) -> dict[str, dict[str, Path]]:
    """ConfigError naming the first problem unless the three models share architecture (the config fields outside
    ``BENIGN_FIELDS``: model_type, hidden size, layers, vocab size, ...), tensor names and shapes, the instruct's
    tokenizer and special token ids fit the target (``check_tokenizer``) and ``out`` may be written. Reads
    configs, file headers and tokenizers, no weights. Returns each role's tensor → file map.
    """
    if not math.isfinite(alpha):
        raise ConfigError(f"alpha={alpha} is not a finite number", "use e.g. alpha=1.0 (0 gives the target)")
    if out in (base, instruct, target):
        raise ConfigError(f"out={out} is one of the input models", "write the merged model to a new folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConfigError(f"out={out} already exists and is not empty", "pass overwrite=true, or choose another out=")
    roles = {"base": base, "instruct": instruct, "target": target}
    for role, folder in roles.items():
        if not folder.is_dir():
            raise ConfigError(f"{role}={folder} is not a folder", f"pass {role}= as a transformers model folder")
    configs = {role: _config(folder, role) for role, folder in roles.items()}
    # These first, so a different architecture or size is named as such rather than by a field derived from it.
    keys = ["model_type", "architectures", "hidden_size", "num_hidden_layers", "vocab_size"]
    keys += sorted({k for c in configs.values() for k in c if not k.startswith("_")} - set(keys) - BENIGN_FIELDS)
    for key in keys:
        values = {role: c.get(key) for role, c in configs.items()}
        if len({json.dumps(v, sort_keys=True, default=str) for v in values.values()}) == 1:
            continue
        shown = ", ".join(f"{role} {v!r}" for role, v in values.items())
        raise ConfigError(f"the three models differ in config field {key}: {shown}", SAME_MODEL)
    files = {role: _weight_files(folder, role) for role, folder in roles.items()}
    headers = {role: _header(f, role) for role, f in files.items()}
    for role in ("base", "instruct"):
        missing = sorted(set(headers["target"]) ^ set(headers[role]))
        if missing:
            has, lacks = ("target", role) if missing[0] in headers["target"] else (role, "target")
            raise ConfigError(
                f"tensor {missing[0]} is in {has} but not in {lacks}"
                + (f" (+{len(missing) - 1} more differences)" if len(missing) > 1 else ""),
                "the three checkpoints must hold the same tensors: " + SAME_MODEL,
            )
        for name, (shape, _) in headers["target"].items():
            if headers[role][name][0] != shape:
                raise ConfigError(
                    f"tensor {name} has shape {headers[role][name][0]} in {role} but {shape} in target", SAME_MODEL
                )
    check_tokenizer(base, instruct, target, configs["target"].get("vocab_size"))
    return files


# --- the merge -----------------------------------------------------------------------------------


def _copy_model_files(instruct: Path, target: Path, tmp: Path) -> dict:
    """Config, generation config and tokenizer of the merged model into ``tmp``; returns where each came from."""
    if (target / INDEX).exists():
        shutil.copy(target / INDEX, tmp / INDEX)
    config = _json(target / "config.json", "target")
    instruct_config = _json(instruct / "config.json", "instruct")
    special = {k: v for k, v in instruct_config.items() if k in SPECIAL_IDS and v != config.get(k)}
    (tmp / "config.json").write_text(json.dumps(config | special, indent=2) + "\n")
    roles = {"instruct": instruct, "target": target}  # the instruct's, where it has them
    generation_from = next((r for r, f in roles.items() if (f / "generation_config.json").exists()), None)
    if generation_from is not None:
        shutil.copy(roles[generation_from] / "generation_config.json", tmp / "generation_config.json")
    tokenizer_from = next((r for r, f in roles.items() if _has_tokenizer(f)), None)
    for name in TOKENIZER_FILES if tokenizer_from is not None else ():
        source = roles[tokenizer_from] / name
        if source.is_dir():
            shutil.copytree(source, tmp / name)
        elif source.exists():
            shutil.copy(source, tmp / name)
    return {
        "tokenizer_from": tokenizer_from,
        "generation_config_from": generation_from,
        "config_from_instruct": special,
    }


def merge_residual(
    base: str | Path,
    instruct: str | Path,
    target: str | Path,
    out: str | Path,
    alpha: float = 1.0,
    overwrite: bool = False,
    progress: bool = False,
) -> dict:
    """Write ``target + alpha * (instruct - base)`` to ``out`` as a model folder and return its ``residual.json``.

    Every floating-point tensor is merged in float32 and cast back to the target's dtype; other tensors are
    the target's. ``config.json`` is the target's with the instruct's ``bos_token_id``/``eos_token_id``/
    ``pad_token_id`` where the instruct's config sets other values; ``generation_config.json`` and the tokenizer
    files (chat template, special and added tokens) are copied unchanged from the instruct, or from the target
    where the instruct has none. ConfigError (before anything is written) when the three do not match
    (``check_inputs``), or when ``out`` is an input or a non-empty folder and ``overwrite`` is false.
    """
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from retain.tracking import progress_bar

    base, instruct, target, out = (Path(p).expanduser().resolve() for p in (base, instruct, target, out))
    files = check_inputs(base, instruct, target, out, alpha, overwrite)

    stats: dict[str, dict[str, float]] = {}
    with atomic_path(out, directory=True) as tmp:
        with ExitStack() as stack:
            handles = {
                (role, file): stack.enter_context(safe_open(file, "pt"))
                for role in ("base", "instruct")
                for file in set(files[role].values())
            }

            def tensor(role: str, name: str) -> torch.Tensor:
                return handles[role, files[role][name]].get_tensor(name)

            bar = progress_bar(len(files["target"]), progress, desc="residual", unit="tensor")
            # Shard by shard, under the target's own file names, so the target's index (if any) fits as is.
            for file in sorted(set(files["target"].values())):
                merged = {}
                with safe_open(file, "pt") as f:
                    for name in f.keys():  # noqa: SIM118 (safe_open handles are not iterable)
                        t = f.get_tensor(name)
                        if t.is_floating_point():
                            t32 = t.float()
                            b, delta = tensor("base", name).float(), tensor("instruct", name).float()
                            delta -= b
                            merged[name] = (t32 + alpha * delta).to(t.dtype)
                            stats[name] = {
                                "residual_norm": float(delta.norm()),
                                "target_norm": float(t32.norm()),
                                "drift_norm": float((t32 - b).norm()),  # how far continued pretraining moved it
                            }
                        else:
                            merged[name] = t
                        bar.update(1)
                save_file(merged, tmp / file.name, metadata={"format": "pt"})
            bar.close()
        sources = _copy_model_files(instruct, target, tmp)
        record = {
            "base": str(base),
            "instruct": str(instruct),
            "target": str(target),
            "alpha": alpha,
            **sources,
            "total": {k: math.sqrt(sum(s[k] ** 2 for s in stats.values())) for k in next(iter(stats.values()), {})},
            "tensors": stats,
        }
        (tmp / "residual.json").write_text(json.dumps(record, indent=2) + "\n")
    return record

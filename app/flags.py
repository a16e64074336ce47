"""The pretraining flags, made from TrainConfig (byol/train.py): one flag per field, its help the field's comment.

The fields, their defaults and their comments are read from the source with `ast` and `tokenize`, without
importing byol.train (which imports torch: `--help` stays instant). A field added to TrainConfig, or to
ModelConfig (byol/model.py) under `model`, becomes a flag by itself: `--name-with-dashes`, typed from its
annotation; a bool field that is on by default becomes `--no-<name>`. The fields that are not flags are
listed in NOT_FLAGS with the reason; FLAGS adds what a comment cannot say (metavar, choices, the flag's
group, the CLI's own wording of a default).

    add_config_flags(parser)        adds the flags to the `pretrain` parser, in groups
    config_from_args(args, cfg)     copies the flags that were given onto a TrainConfig (others keep defaults)
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib.util
import io
import re
import tokenize
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from byol.train import TrainConfig

# fields that are not flags, and why (everything else in TrainConfig and ModelConfig is one)
NOT_FLAGS = {
    "folder": "the positional FOLDER",
    "augment": "the paper's augmentation recipe; its image size follows the model",
    "hf_image_column": "the first Image feature is what HF image datasets have",
    "cache_side": "follows image_size",
    "gemm_weight_grads": "a kernel choice made per CPU",
    "stop_at": "staged runs, for scripts",
    "max_bad_steps": "a safety limit",
    "model.proj_dim": "the paper's 256",
}
GROUPS = (None, "model", "optimisation", "machine")  # argument groups of `pretrain --help`, in order
INIT_HELP = ("where the encoder starts: auto (the default: base when one is shipped for the backbone and image "
             "size, i.e. resnet-tiny at 64 px or less, else none), base (shipped with the package, pretrained by "
             "this project on public photos; offline; +19 points over random weights on unseen photo classes "
             "after 15 minutes), none (random weights), imagenet (torchvision's weights for resnet18/34/50, "
             "downloaded once when online), or PATH (an earlier run's checkpoint.pt, to continue on a new or "
             "grown folder, or a torchvision-style state dict)")


@dataclass
class Field:
    """One config field as the source declares it."""

    name: str  # attribute name; "model.x" for ModelConfig's
    annotation: str  # e.g. "int", "str | None"
    default: Any  # the literal default (None when it is not a literal, e.g. a default_factory)
    comment: str  # the comment above and beside the field, joined


def _source(module: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(f"cannot find {module}")
    with open(spec.origin, encoding="utf-8") as f:
        return f.read()


def _comments(source: str) -> dict[int, str]:
    """{line number: comment text} of every comment in source."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


@functools.cache
def config_fields(module: str, cls: str) -> tuple[Field, ...]:
    """The annotated fields of dataclass `cls` in `module`, with their literal defaults and comments: the
    comment lines right above a field, then the one beside it."""
    source = _source(module)
    comments = _comments(source)
    node = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == cls)
    fields = []
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        above: list[str] = []
        line = stmt.lineno - 1
        while line in comments and source.splitlines()[line - 1].lstrip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        beside = comments.get(stmt.end_lineno) if stmt.end_lineno is not None else None
        text = " ".join(above + ([beside] if beside else []))
        try:
            default = ast.literal_eval(stmt.value) if stmt.value is not None else None
        except ValueError:
            default = None
        fields.append(Field(stmt.target.id, ast.unparse(stmt.annotation), default, text))
    return tuple(fields)


@functools.cache
def module_constant(module: str, name: str) -> Any:
    """A literal module-level constant (a tuple of names, say) read from the source without importing it."""
    for n in ast.parse(_source(module)).body:
        if not isinstance(n, ast.Assign):
            continue
        for target in n.targets:
            if isinstance(target, ast.Name) and target.id == name:
                return ast.literal_eval(n.value)
            if isinstance(target, ast.Tuple) and isinstance(n.value, ast.Tuple):  # A, B = 1, 2
                for t, v in zip(target.elts, n.value.elts):
                    if isinstance(t, ast.Name) and t.id == name:
                        return ast.literal_eval(v)
    raise LookupError(f"{module}.{name} is not a literal constant")


def backbones() -> tuple[str, ...]:
    return cast("tuple[str, ...]", module_constant("byol.model", "BACKBONES"))


# what a field's comment cannot say: argparse options, the group, the CLI's own wording of a default
# ("default_help"; the default in parentheses otherwise comes from the dataclass) and advice for the
# command line only ("advice", after the comment)
FLAGS: dict[str, dict[str, Any]] = {
    "out": {"metavar": "RUN_DIR", "required": True, "default_help": ""},
    "budget": {"metavar": "TIME", "type": str, "default_help": "default 20m when --steps is not given",
               "help": "wall-clock time for the whole run, e.g. 90s, 20m, 1.5h"},
    "steps": {"default_help": "", "help": "train exactly this many steps instead of planning from --budget"},
    "resume": {},
    "eval_folder": {"metavar": "DIR"},
    "eval_every": {"metavar": "N"},
    "hf": {"metavar": "NAME_OR_PATH"},
    "hf_split": {},
    "model.backbone": {"group": "model", "choices": backbones, "advice": "resnet18/50 want a GPU"},
    "model.image_size": {"group": "model", "advice": "in px; 32 on a CPU at any budget (64 ended 3 kNN points "
                                                      "lower at 2 hours); 64-224 on a GPU"},
    "crop_size": {"group": "model"},
    "model.proj_hidden": {"group": "model"},
    "init": {"group": "model", "metavar": "auto|none|base|imagenet|PATH", "help": INIT_HELP, "default_help": ""},
    "batch_size": {"group": "optimisation"},
    "optimizer": {"group": "optimisation", "choices": lambda: module_constant("byol.optim", "OPTIMIZERS")},
    "base_lr": {"group": "optimisation"},
    "warmup": {"group": "optimisation"},
    "weight_decay": {"group": "optimisation"},
    "base_tau": {"group": "optimisation"},
    "device": {"group": "machine"},
    "precision": {"group": "machine", "choices": lambda: ("auto", "fp32", "bf16")},
    "channels_last": {"group": "machine"},
    "compile": {"group": "machine", "choices": lambda: ("auto", "on", "off"), "advice": "needs a C++ compiler"},
    "threads": {"group": "machine"},
    "workers": {"group": "machine"},
    "cache_dir": {"group": "machine", "advice": "share it between runs"},
    "seed": {"group": "machine"},
    "log_every": {"group": "machine"},
    "checkpoint_every": {"group": "machine"},
    "checkpoint_minutes": {"group": "machine"},
    "progress": {"group": "machine"},
}
_TYPES = {"int": int, "float": float, "str": str}
AT_LEAST_ONE = ("batch_size", "model.image_size", "eval_every", "log_every", "checkpoint_every",
                "model.proj_hidden", "threads", "crop_size")  # checked before any work starts


def pretrain_fields() -> list[Field]:
    """Every field that is a flag: TrainConfig's, then ModelConfig's as model.<name>, ordered as FLAGS lists
    them (fields FLAGS does not know yet come last, in the "machine" group's place: after it)."""
    fields = [f for f in config_fields("byol.train", "TrainConfig")]
    fields += [Field(f"model.{f.name}", f.annotation, f.default, f.comment)
               for f in config_fields("byol.model", "ModelConfig")]
    fields = [f for f in fields if f.name not in NOT_FLAGS and f.name != "model"]
    order = list(FLAGS)
    return sorted(fields, key=lambda f: order.index(f.name) if f.name in order else len(order))


def flag_name(f: Field) -> str:
    """--image-size for model.image_size; --no-progress for a bool that is on by default."""
    base = f.name.split(".")[-1].replace("_", "-")
    return f"--no-{base}" if f.annotation == "bool" and f.default else f"--{base}"


def _help(f: Field, extra: dict[str, Any]) -> str:
    """The field's comment (in words a user reads: `None = x` becomes `default x`, constant names their
    values), its advice, and the default."""
    text = extra.get("help", f.comment).replace("None = ", "default ")
    text = re.sub(r"\b[A-Z][A-Z_]{3,}\b", _constant, text)
    if "advice" in extra:
        text = f"{text}; {extra['advice']}"
    if f.annotation == "bool" and f.default:
        text = f"{text}: on by default, this turns it off"
    default = extra.get("default_help")
    if default is None and f.default is not None and f.annotation != "bool" and f"{f.default} =" not in text:
        default = f"default {f.default}"
    text = f"{text} ({default})" if default else text
    return text.replace("%", "%%")  # argparse formats help with %


def _constant(m: re.Match[str]) -> str:
    """A constant's value where a comment names it (CROP_FRACTION -> 0.625), else its name."""
    for module in ("byol.train", "byol.model"):
        try:
            value = module_constant(module, m.group(0))
        except (LookupError, ValueError):
            continue
        return ", ".join(map(str, value)) if isinstance(value, tuple) else str(value)
    return m.group(0)


def add_config_flags(parser: argparse.ArgumentParser,
                     after: dict[str, Callable[[Any], object]] | None = None) -> None:
    """The pretraining flags, grouped as GROUPS; every default is None, so that a flag not given leaves the
    TrainConfig default in place (config_from_args). after: {field name: add(parser)} for flags of the
    command's own, placed after that field's flag."""
    after = after or {}
    groups: dict[str | None, argparse._ActionsContainer] = {
        None: parser, **{g: parser.add_argument_group(g) for g in GROUPS[1:]}}
    for f in pretrain_fields():
        extra = FLAGS.get(f.name, {"group": "machine"})
        target = groups[extra.get("group")]
        kw: dict[str, Any] = {"dest": f.name.split(".")[-1], "help": _help(f, extra)}
        if f.annotation == "bool":
            kw["action"] = "store_true"
        else:
            kw["type"] = extra.get("type") or _TYPES.get(f.annotation.split(" | ")[0], str)
            for k in ("metavar", "required"):
                if k in extra:
                    kw[k] = extra[k]
            if "choices" in extra:
                kw["choices"] = tuple(extra["choices"]())
        target.add_argument(flag_name(f), **kw)
        if f.name in after:
            after[f.name](target)


def config_from_args(args: argparse.Namespace, cfg: TrainConfig) -> None:
    """Copy every flag given on the command line onto cfg (a TrainConfig); bools are set either way."""
    for f in pretrain_fields():
        if f.name in ("budget", "steps"):
            continue  # TIME text and the steps-or-budget rule: the command handles them
        value = getattr(args, f.name.split(".")[-1])
        if f.annotation == "bool":
            value = not value if f.default else value
        elif value is None:
            continue
        owner = cfg.model if f.name.startswith("model.") else cfg
        setattr(owner, f.name.split(".")[-1], value)

"""Which variant a composed config selects: its files, the switches set on purpose, its label.

Hydra merges the files of ``variant=[a,b]``, an experiment's ``variant:`` keys and the
``variant.*`` overrides onto the schema's defaults (``schema/variant``), so the composed node
cannot tell a switch someone set from one left at its default. This module can, and so refuses
what the composed values alone would let through:

* a switch of another family, *whatever its value* (``variant=gru variant.peepholes=true`` would
  otherwise train a GRU under an LSTM switch);
* variant files of two families combined (``variant=[gru,rnn]``: the last ``family`` would win);

and it labels a variant by its file: ``variant=gruish`` is ``gruish`` in MLflow and the analysis
unless the file sets ``name:`` (a combination on the command line keeps the ``a+b`` label the
switches give).

Example:
    >>> selection = select("train", ["variant=gru", "variant.peepholes=true"])  # doctest: +SKIP
    >>> selection.check("gru")  # doctest: +SKIP
    Traceback (most recent call last):
    ...
    odyssey.errors.ConfigError: variant.peepholes (a switch of the lstm family) is set on variant 'gru', whose family is gru; ...
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

from odyssey.cells.spec import FAMILY_SWITCHES, VariantSpec
from odyssey.errors import ConfigError

__all__ = ["VariantSelection", "select", "variant_overrides"]

_UNSET = "__odyssey_unset__"  # the probe schema's value of every key: still there = nobody set it
_ALL_FAMILIES = ("family", "name")  # keys that apply to every family


@dataclass(frozen=True)
class VariantSelection:
    """What selected a config's variant.

    Attributes:
        files: the variant files ``variant=`` names, in order (``()`` when the default is used).
        families: each file's family (its ``family:`` key, else ``lstm``).
        explicit: the ``variant`` keys set by a file, an experiment or an override, with their values.
        tweaked: ``variant.*=`` overrides change the files' switches.
    """

    files: tuple[str, ...]
    families: dict[str, str]
    explicit: dict[str, Any]
    tweaked: bool

    @property
    def described(self) -> str:
        """How the user wrote the variant: ``'gru'``, ``'[gru,rnn]'`` or ``'the default'``."""
        if not self.files:
            return "the default"
        return repr(self.files[0]) if len(self.files) == 1 else f"[{','.join(self.files)}]"

    def check(self, family: str) -> None:
        """Refuse files of two families and any explicit switch that ``family`` (the composed
        variant's) does not have."""
        if len(set(self.families.values())) > 1:
            shown = ", ".join(f"{name} ({fam})" for name, fam in self.families.items())
            raise ConfigError(
                f"variant={self.described} combines variants of different families: {shown}; a variant is one cell "
                "(combine variants of one family, e.g. variant=[np,cifg], or pick one)"
            )
        own = set(FAMILY_SWITCHES[family]) | set(_ALL_FAMILIES)
        foreign = sorted(k for k in self.explicit if k not in own)
        if foreign:
            owners = {k: fam for fam, keys in FAMILY_SWITCHES.items() for k in keys}
            shown = ", ".join(f"variant.{k} (a switch of the {owners[k]} family)" for k in foreign)
            valid = ", ".join(FAMILY_SWITCHES[family]) or "none"
            raise ConfigError(
                f"{shown} is set on variant {self.described}, whose family is {family}; the {family} family's "
                f"switches: {valid} (family and name apply to every family)"
            )

    def label(self) -> str | None:
        """The name a single variant file gives its variant: ``None`` for a combination, the
        default, a file that sets ``name:`` itself, or a file changed by ``variant.*=`` overrides
        (the switches then name it, e.g. ``np+cifg``)."""
        if len(self.files) != 1 or self.tweaked or "name" in self.explicit:
            return None
        return self.files[0]


def variant_overrides(overrides: Sequence[str]) -> list[str]:
    """The overrides among ``overrides`` that set the variant: ``variant=...`` and ``variant.*=...``
    (with or without ``+``, ``++`` or ``~``)."""
    found = []
    for o in overrides:
        key = o.lstrip("+~").split("=", 1)[0].split("@", 1)[0].strip()
        if key == "variant" or key.startswith("variant."):
            found.append(o)
    return found


def select(config_name: str, overrides: Sequence[str]) -> VariantSelection:
    """The variant files and explicitly set keys of ``conf/<config_name>.yaml`` composed with
    ``overrides`` (composed once more, over a ``schema/variant`` whose keys are all unset)."""
    files = tuple(_selected_files(overrides))
    tweaked = any(o.lstrip("+~").split("=", 1)[0].strip() != "variant" for o in variant_overrides(overrides))
    return VariantSelection(files, file_families(files), _explicit_keys(config_name, overrides), tweaked)


def file_families(names: Sequence[str]) -> dict[str, str]:
    """Each variant file's family: its ``family:`` key, else ``lstm`` (the schema's default)."""
    import yaml

    from odyssey.config import group_options

    options = group_options("variant")
    families = {}
    for name in names:
        path = options.get(name)
        data = yaml.safe_load(path.read_text()) if path is not None else None
        families[name] = str(data.get("family", "lstm")) if isinstance(data, dict) else "lstm"
    return families


def _selected_files(overrides: Sequence[str]) -> list[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    files: list[str] = []
    chosen = [o for o in variant_overrides(overrides) if o.lstrip("+~").split("=", 1)[0].strip() == "variant"]
    if not chosen:
        return files
    try:
        (parsed,) = OverridesParser.create().parse_overrides([chosen[-1]])  # the last one wins, as in Hydra
    except Exception:  # noqa: BLE001 - Hydra's compose reports a malformed override itself
        return files
    value = parsed.value()
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _explicit_keys(config_name: str, overrides: Sequence[str]) -> dict[str, Any]:
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from odyssey.config import _HYDRA_LOCK, _hydra_compose, config_search_path, register_schemas

    store = ConfigStore.instance()
    probe = {f.name: _UNSET for f in dataclasses.fields(VariantSpec)}
    with _HYDRA_LOCK:
        register_schemas()
        store.store(group="schema", name="variant", node=probe, provider="odyssey")
        try:
            cfg = _hydra_compose(config_search_path(), config_name, tuple(overrides))
        finally:
            store.store(group="schema", name="variant", node=dataclasses.asdict(VariantSpec()), provider="odyssey")
    node = OmegaConf.to_container(cfg.get("variant") or {}, resolve=True)
    return {k: v for k, v in node.items() if v != _UNSET}

"""Load the catalog: one ``<id>.toml`` file per upstream bug (parsed and validated by
gradfix.catalog_files).

The built-in catalog is ``gradfix/_catalog`` in an installed wheel and
``patches/`` in a checkout (editable installs included). Every problem is reported
with the file and the field it concerns; a bad file is skipped, never guessed at.

Start-up speed: parsing TOML means importing tomllib, re and datetime, which
would cost more than the rest of ``import gradfix``. So the built-in catalog is
also compiled (``python -m gradfix._generate``) into the block at the end of this
module, each entry's row (the fields activation reads) and each file's size and
CRC-32, with every field in ``gradfix/_catalog_entries.py``, read on first use. A
wheel's catalog, installed with its index, is checked by file names; a checkout's is
used only while every file still matches its fingerprint; otherwise the TOML files
are parsed and validated. An extra folder (GRADFIX_CATALOG_PATH) gets the same with
``gradfix index FOLDER``, which writes ``FOLDER/gradfix-index.marshal``.
"""

import marshal
import os

from .versions import normalise

#: field -> (type, description); the schema documented in patches/README.md.
SCHEMA = {
    "id": (str, "patch id, equal to the file name without .toml"),
    "package": (str, "distribution name on PyPI, e.g. deepspeed"),
    "affected": (str, "PEP 440 specifier set of the buggy releases"),
    "fixed_in": (str, 'first upstream release with the fix, or "none" while no release has it'),
    "summary": (str, "one line: what goes wrong"),
    "trigger": (str, "the configurations that hit the bug"),
    "effect": (str, "what the bug does to training"),
    "upstream": (list, "issue / pull-request references"),
    "implementation": (str, "dotted module path of the fix"),
    "since": (str, "gradfix version that first shipped the patch"),
}
#: optional field -> (type, description, default).
OPTIONAL = {
    "numerics_changed": (list, "gradfix versions whose release changed what this patch computes", ()),
    "unpatched": (list, "releases inside `affected` that gradfix knowingly leaves alone, each 'SPECIFIERS: why'", ()),
}
#: ``fixed_in`` of a bug that no upstream release fixes yet.
UNFIXED = "none"
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def split_unpatched(item: str):
    """An ``unpatched`` item, 'SPECIFIERS: why', as (specifiers, why)."""
    specifiers, _, why = item.partition(":")
    return specifiers.strip(), why.strip()


class CatalogEntry:
    """One validated catalog file. Activation reads only the fields in ``__slots__``;
    the texts and lists are taken from the validated fields when first asked for, so
    that every start-up pays little per entry. ``affected`` and ``fixed_in`` are parsed
    with ``packaging`` on first use only."""

    __slots__ = ("id", "package", "affected", "fixed_in", "implementation", "target", "_fields", "_directory",
                 "_texts", "_parsed")

    def __init__(self, fields: dict, directory: str):
        self.id = fields["id"]
        self.package = fields["package"]
        self.affected = fields["affected"]
        self.fixed_in = fields["fixed_in"]
        self.implementation = fields["implementation"]
        self._fields = fields
        self._directory = directory  # the file is <directory>/<id>.toml (validated)
        self._texts = None  # see indexed()
        # The module the fix patches (its TARGET), when the index knows the implementation:
        # the engine then arms the patch without importing the fix module.
        self.target = known_target(self.implementation)
        self._parsed = None

    @classmethod
    def indexed(cls, row: tuple, directory: str, texts):
        """An entry of an index (the built-in one or a folder's), from its row (see
        ``row``); ``texts(id)`` returns all of its fields when first needed."""
        entry = cls.__new__(cls)
        entry.id, entry.package, entry.affected, entry.fixed_in, entry.implementation = row[:5]
        entry._fields, entry._directory, entry._texts, entry._parsed = None, directory, texts, None
        entry.target = known_target(entry.implementation)
        return entry

    def __getattr__(self, name):  # only for what __slots__ does not hold
        if name.startswith("_"):  # an unset slot (a half-built copy): never recurse
            raise AttributeError(name)
        if self._texts is not None and (name in SCHEMA or name in OPTIONAL):
            self._fields, self._texts = self._texts(self.id), None
        if name in SCHEMA:
            value = self._fields[name]
            return tuple(value) if name == "upstream" else value
        if name in OPTIONAL:
            return tuple(self._fields.get(name, OPTIONAL[name][2]))
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def path(self) -> str:
        return os.path.join(self._directory, self.id + ".toml")

    @property
    def row(self) -> tuple:
        """The decision fields, as the catalog's rows hold them, and the normalised name of
        the package (as its metadata folder spells it; see versions.normalise)."""
        return self.id, self.package, self.affected, self.fixed_in, self.implementation, normalise(self.package)

    def to_dict(self) -> dict:
        data = {name: getattr(self, name) for name in SCHEMA}
        data["upstream"] = list(self.upstream)
        data.update({name: list(getattr(self, name)) for name in OPTIONAL if getattr(self, name)})
        return data

    @property
    def affected_set(self):
        """The affected range as a ``packaging.specifiers.SpecifierSet``."""
        if self._parsed is None:
            from packaging.specifiers import SpecifierSet

            self._parsed = SpecifierSet(self.affected)
        return self._parsed

    def unpatched_reason(self, release: str) -> str:
        """Why gradfix leaves ``release`` (inside ``affected``) alone, from ``unpatched``; "" if not."""
        from packaging.specifiers import SpecifierSet

        for item in self.unpatched:
            specifiers, why = split_unpatched(item)
            if SpecifierSet(specifiers).contains(release, prereleases=True):
                return why
        return ""

    def upgrade_advice(self) -> str:
        """What upgrading the package does about this bug, as a sentence."""
        if self.fixed_in == UNFIXED:
            return f"No {self.package} release fixes this bug yet"
        return f"Upgrading to {self.package} >={self.fixed_in} fixes the bug upstream"

    def __repr__(self) -> str:
        return f"CatalogEntry({self.id!r}, {self.package} {self.affected})"


class CatalogProblem:
    def __init__(self, path: str, field, message: str):
        self.path, self.field, self.message = path, field, message

    def __str__(self) -> str:
        where = f"field {self.field!r}: " if self.field else ""
        return f"{self.path}: {where}{self.message}"

    __repr__ = __str__


class Catalog:
    """The loaded catalog: ``groups``, one (origin, rows) pair per catalog folder, a row
    holding one entry's decision fields (CatalogEntry.row: id, package, affected,
    fixed_in, implementation, normalised package name), all that activation reads; and
    ``problems``. ``entries`` builds the CatalogEntry objects on first use, so a
    start-up that settles most entries from their rows (their package is not installed)
    builds few of them."""

    def __init__(self, groups, problems):
        self.groups = tuple(groups)
        self.problems = tuple(problems)
        self._entries = None

    @property
    def entries(self):
        if self._entries is None:
            self._entries = tuple(origin.entry(row) for origin, rows in self.groups for row in rows)
        return self._entries

    @property
    def ids(self):
        return tuple(row[0] for _, rows in self.groups for row in rows)


class Origin:
    """The catalog folder a group of rows comes from; builds each row's CatalogEntry
    once (``build(row)``), so that every caller gets the same object."""

    def __init__(self, directory: str, build, built=None):
        self.directory = directory
        self._build = build
        self._built = dict(built or {})

    def entry(self, row) -> "CatalogEntry":
        entry = self._built.get(row[0])
        if entry is None:
            entry = self._built[row[0]] = self._build(row)
        return entry

    def path(self, row) -> str:
        return os.path.join(self.directory, row[0] + ".toml")


def _parsed_group(directory: str, entries):
    """A group of entries already built (parsed from TOML files)."""
    return Origin(directory, None, {entry.id: entry for entry in entries}), [entry.row for entry in entries]


def _shipped_dir() -> str:
    return os.path.join(_PACKAGE_DIR, "_catalog")


def builtin_dir() -> str:
    """Where the built-in catalog lives for this install (wheel or checkout)."""
    shipped = _shipped_dir()
    return shipped if os.path.isdir(shipped) else os.path.join(os.path.dirname(_PACKAGE_DIR), "patches")


# -- loading ------------------------------------------------------------------

def _toml_names(directory: str):
    """The catalog files of ``directory``, by name, sorted."""
    return sorted(name for name in os.listdir(directory) if name.endswith(".toml"))


def _toml_files(directory: str):
    return [os.path.join(directory, name) for name in _toml_names(directory)]


def known_target(implementation: str):
    """The TARGET of a built-in fix module, from the index (None when it is not one)."""
    return BUILTIN_TARGETS.get(implementation)


def _from_index(directory: str, names, shipped: bool = False):
    """The built-in index's (origin, rows) if it describes exactly these files, else
    None. ``shipped``: the wheel's own copy of the catalog, installed with the index
    from the same build, is checked by file names; a checkout's patches/, edited by
    hand, file by file."""
    if sorted(BUILTIN_FILES) != names:
        return None
    if not shipped:
        from .catalog_files import fingerprint

        if any(fingerprint(os.path.join(directory, name)) != BUILTIN_FILES[name] for name in names):
            return None
    return Origin(directory, lambda row: CatalogEntry.indexed(row, directory, _builtin_fields)), BUILTIN_ROWS


_builtin_entries = {}


def _builtin_fields(entry_id: str) -> dict:
    """Every field of a built-in entry, from gradfix/_catalog_entries.py (loaded on first use)."""
    if not _builtin_entries:
        from ._catalog_entries import ENTRIES

        _builtin_entries.update((fields["id"], fields) for fields in ENTRIES)
    return _builtin_entries[entry_id]


# -- folder index (`gradfix index`, written by catalog_files.write_folder_index) -----
#
# FOLDER_INDEX holds two marshal records: the head, which start-up reads (each entry's
# row, CatalogEntry.row, in file-name order, and, for a checked index, the files'
# stamps), and the rest, decoded only when something asks for an entry's summary,
# trigger or effect, or whether an unchecked index is stale (the entries' full fields
# and the files' fingerprints). Its first four bytes give the head's length. The file
# names are the ids plus ".toml" (validated), so they are not recorded again.

FOLDER_INDEX = "gradfix-index.marshal"
_FOLDER_INDEX_FORMAT = 2


def _stamps(directory: str, names) -> dict:
    """file name -> (size, modification time in ns): one stat per file."""
    if os.stat in os.supports_dir_fd:  # no path walk per file
        folder = os.open(directory, os.O_RDONLY)
        try:
            stats = [os.stat(name, dir_fd=folder) for name in names]
        finally:
            os.close(folder)
    else:
        stats = [os.stat(os.path.join(directory, name)) for name in names]
    return {name: (info.st_size, info.st_mtime_ns) for name, info in zip(names, stats)}


class _FolderIndex:
    """A folder index file: start-up reads its head only; the rest is read on first use,
    if the file is still the one whose head was read (its ``serial``)."""

    def __init__(self, directory: str):
        self.directory = directory
        self._path = os.path.join(directory, FOLDER_INDEX)
        with open(self._path, "rb") as handle:
            size = int.from_bytes(handle.read(4), "little")
            head = marshal.loads(handle.read(size))  # (marshal.load would read piece by piece: slow)
        if head["format"] != _FOLDER_INDEX_FORMAT:
            raise ValueError(f"format {head['format']}")
        self.rows, self.stamps, self._serial = head["entries"], head["stamps"], head["serial"]
        self._offset, self._rest = 4 + size, None

    @property
    def names(self):
        return [row[0] + ".toml" for row in self.rows]

    def _decoded(self) -> dict:
        if self._rest is None:
            self._rest = {"entries": {}, "fingerprints": {}}  # the index was rewritten since
            try:
                with open(self._path, "rb") as handle:
                    handle.seek(self._offset)
                    rest = marshal.loads(handle.read())
                if rest["serial"] == self._serial:
                    self._rest = {"entries": {fields["id"]: fields for fields in rest["entries"]},
                                  "fingerprints": rest["fingerprints"]}
            except (OSError, EOFError, ValueError, TypeError, KeyError):
                pass
        return self._rest

    def fields(self, entry_id: str) -> dict:
        fields = self._decoded()["entries"].get(entry_id)
        if fields is None:  # the index was rewritten after start-up read its head: the file itself
            from .catalog_files import load_file

            fields = load_file(os.path.join(self.directory, entry_id + ".toml")).to_dict()
        return fields

    def fingerprints(self) -> dict:
        return self._decoded()["fingerprints"]


def _read_folder_index(directory: str):
    try:
        return _FolderIndex(directory)
    except (OSError, EOFError, ValueError, TypeError, KeyError, IndexError):
        return None


def _from_folder_index(directory: str):
    """The (origin, rows) FOLDER_INDEX records for ``directory``: an unchecked index as it
    is; a checked one if the folder holds the same files, unchanged. None otherwise
    (no index, another format, or a changed folder: the TOML files are parsed)."""
    index = _read_folder_index(directory)
    if index is None:
        return None
    if index.stamps is not None:
        try:
            names = _toml_names(directory)
            if index.names != names or index.stamps != _stamps(directory, names):
                return None
        except OSError:
            return None
    return Origin(directory, lambda row: CatalogEntry.indexed(row, directory, index.fields)), index.rows


def load(extra_dirs=(), include_builtin: bool = True, use_index: bool = True) -> Catalog:
    """Load the built-in catalog plus ``extra_dirs``; bad files become problems."""
    dirs = [builtin_dir()] if include_builtin else []
    dirs += list(extra_dirs)
    groups, problems, seen = [], [], {}  # seen: id -> the origin that defined it
    for number, directory in enumerate(dirs):
        if not os.path.isdir(directory):
            where = "this catalog folder" if number == 0 and include_builtin else "a GRADFIX_CATALOG_PATH folder"
            problems.append(CatalogProblem(directory, None, f"{where} does not exist; its patches are not loaded"))
            continue
        builtin = include_builtin and number == 0
        loaded = _from_folder_index(directory) if use_index and not builtin else None
        if loaded is None:
            try:
                names = _toml_names(directory)
            except OSError as exc:
                problems.append(CatalogProblem(directory, None, f"cannot list the catalog folder: {exc}"))
                continue
            if use_index and builtin:
                loaded = _from_index(directory, names, shipped=directory == _shipped_dir())
        if loaded is None:
            from . import catalog_files

            parsed = []
            for name in names:
                try:
                    parsed.append(catalog_files.load_file(os.path.join(directory, name)))
                except catalog_files.CatalogError as exc:
                    problems.append(exc.problem)
            loaded = _parsed_group(directory, parsed)
        origin, rows = loaded
        ids = [row[0] for row in rows]
        if seen.keys().isdisjoint(ids):  # the usual case
            seen.update(dict.fromkeys(ids, origin))
        else:  # an id an earlier folder defines already: the first definition wins
            kept = []
            for row in rows:
                if row[0] in seen:
                    problems.append(CatalogProblem(origin.path(row), "id",
                                                   f"{row[0]!r} is already defined in {seen[row[0]].path(row)}"))
                    continue
                seen[row[0]] = origin
                kept.append(row)
            rows = kept
        groups.append((origin, rows))
    return Catalog(groups, problems)


# -- the built-in catalog's index ---------------------------------------------------
# Generated from patches/*.toml by `python -m gradfix._generate` (do not edit: edit
# patches/ and regenerate); here rather than in a module of its own, which would cost
# every start-up one more import. Each catalog file's (size, CRC-32), the module each
# built-in fix patches, and every entry's row. The entries' other fields are in
# gradfix/_catalog_entries.py.
# generated: begin
BUILTIN_FILES = {
    'accelerate-deepspeed-short-window.toml': (1166, 4231720772),
    'ds-bf16-zero0-unfused.toml': (1040, 1411282001),
    'ds-bf16-zero1-last-microbatch.toml': (1019, 3752273480),
    'ds-output-hooks-direct-backward.toml': (1129, 1036676879),
    'ds-output-hooks-engine-backward.toml': (1479, 3738776400),
    'ds-pipeline-ga-scale.toml': (1023, 1262860557),
    'ds-scale-wrt-gas-ignored.toml': (781, 380738366),
    'ds-zero2-epilogue-reset.toml': (743, 1842609034),
    'ds-zero2-offload-ga.toml': (875, 900992549),
    'ds-zero2-offload-multi-backward.toml': (789, 2104320244),
    'hf-ddp-no-sync-inverted.toml': (757, 158165958),
    'hf-deepspeed-double-ga-scale.toml': (907, 1952327440),
    'hf-dp-token-average.toml': (874, 2430045263),
    'hf-loss-without-count-not-divided.toml': (1328, 2409256169),
    'hf-mean-loss-not-divided.toml': (913, 428100323),
    'hf-num-items-not-passed.toml': (1014, 3563426601),
    'hf-partial-window-ga-divisor.toml': (1032, 2250011581),
    'lf-mm-token-sum.toml': (1135, 1381143497),
    'openrlhf-ppo-actor-dynamic-batch-boundary.toml': (1156, 4130711823),
    'openrlhf-ppo-actor-microbatch-mean-dp.toml': (718, 1749820268),
    'openrlhf-ppo-actor-microbatch-mean.toml': (1000, 585773660),
    'openrlhf-ppo-critic-dynamic-batch-boundary.toml': (1160, 1645895659),
    'openrlhf-ppo-critic-microbatch-mean-dp.toml': (732, 1301687492),
    'openrlhf-ppo-critic-microbatch-mean.toml': (989, 3378065506),
    'openrlhf-ppo-dynamic-batch-sample-fraction.toml': (892, 2011668233),
    'openrlhf-sft-epoch-boundary.toml': (648, 2034200375),
    'openrlhf-sft-gptlm-mean.toml': (899, 1846922953),
    'openrlhf-sft-microbatch-mean-dp.toml': (660, 2006541385),
    'openrlhf-sft-microbatch-mean.toml': (682, 3555642726),
    'trl-grpo-truncated-denominator.toml': (785, 1734293486),
    'trl-grpo-window-normaliser.toml': (747, 3987158696),
}
BUILTIN_TARGETS = {
    'gradfix.fixes.accelerate.deepspeed_short_window': 'accelerate.utils.deepspeed',
    'gradfix.fixes.deepspeed.bf16_zero0_unfused': 'deepspeed.runtime.engine',
    'gradfix.fixes.deepspeed.bf16_zero1_last_microbatch': 'deepspeed.runtime.engine',
    'gradfix.fixes.deepspeed.output_hooks_direct_backward': 'deepspeed.runtime.engine',
    'gradfix.fixes.deepspeed.output_hooks_engine_backward': 'deepspeed.runtime.engine',
    'gradfix.fixes.deepspeed.pipeline_ga_scale': 'deepspeed.runtime.pipe.engine',
    'gradfix.fixes.deepspeed.scale_wrt_gas_ignored': 'deepspeed.runtime.engine',
    'gradfix.fixes.deepspeed.zero2_epilogue_reset': 'deepspeed.runtime.zero.stage_1_and_2',
    'gradfix.fixes.deepspeed.zero2_offload_ga': 'deepspeed.runtime.zero.stage_1_and_2',
    'gradfix.fixes.deepspeed.zero2_offload_multi_backward': 'deepspeed.runtime.zero.stage_1_and_2',
    'gradfix.fixes.llamafactory.mm_token_sum': 'llamafactory.train.sft.trainer',
    'gradfix.fixes.openrlhf.ppo_actor_dynamic_batch_boundary': 'openrlhf.trainer.ray.ppo_actor',
    'gradfix.fixes.openrlhf.ppo_actor_microbatch_mean': 'openrlhf.trainer.ray.ppo_actor',
    'gradfix.fixes.openrlhf.ppo_actor_microbatch_mean_dp': 'openrlhf.trainer.ray.ppo_actor',
    'gradfix.fixes.openrlhf.ppo_critic_dynamic_batch_boundary': 'openrlhf.trainer.ray.ppo_critic',
    'gradfix.fixes.openrlhf.ppo_critic_microbatch_mean': 'openrlhf.trainer.ray.ppo_critic',
    'gradfix.fixes.openrlhf.ppo_critic_microbatch_mean_dp': 'openrlhf.trainer.ray.ppo_critic',
    'gradfix.fixes.openrlhf.ppo_dynamic_batch_sample_fraction': 'openrlhf.trainer.ppo_utils.replay_buffer',
    'gradfix.fixes.openrlhf.sft_epoch_boundary': 'openrlhf.trainer.sft_trainer',
    'gradfix.fixes.openrlhf.sft_gptlm_mean': 'openrlhf.trainer.sft_trainer',
    'gradfix.fixes.openrlhf.sft_microbatch_mean': 'openrlhf.trainer.sft_trainer',
    'gradfix.fixes.openrlhf.sft_microbatch_mean_dp': 'openrlhf.trainer.sft_trainer',
    'gradfix.fixes.transformers.ddp_no_sync_inverted': 'transformers.trainer',
    'gradfix.fixes.transformers.deepspeed_double_ga_scale': 'transformers.trainer',
    'gradfix.fixes.transformers.dp_token_average': 'transformers.training_args',
    'gradfix.fixes.transformers.loss_without_count': 'transformers.trainer',
    'gradfix.fixes.transformers.mean_loss_not_divided': 'transformers.trainer',
    'gradfix.fixes.transformers.num_items_not_passed': 'transformers.trainer',
    'gradfix.fixes.transformers.partial_window': 'transformers.trainer',
    'gradfix.fixes.trl.grpo_truncated_denominator': 'trl.trainer.grpo_trainer',
    'gradfix.fixes.trl.grpo_window_normaliser': 'trl.trainer.grpo_trainer',
}
BUILTIN_ROWS = [
    ('accelerate-deepspeed-short-window', 'accelerate', '>=0.26.0,<1.8.0', '1.8.0', 'gradfix.fixes.accelerate.deepspeed_short_window', 'accelerate'),
    ('ds-bf16-zero0-unfused', 'deepspeed', '>=0.17.6,<0.18.6', '0.18.6', 'gradfix.fixes.deepspeed.bf16_zero0_unfused', 'deepspeed'),
    ('ds-bf16-zero1-last-microbatch', 'deepspeed', '>=0.18.5,<0.19.0', '0.19.0', 'gradfix.fixes.deepspeed.bf16_zero1_last_microbatch', 'deepspeed'),
    ('ds-output-hooks-direct-backward', 'deepspeed', '>=0.18.3', 'none', 'gradfix.fixes.deepspeed.output_hooks_direct_backward', 'deepspeed'),
    ('ds-output-hooks-engine-backward', 'deepspeed', '>=0.18.3,<0.19.6', '0.19.6', 'gradfix.fixes.deepspeed.output_hooks_engine_backward', 'deepspeed'),
    ('ds-pipeline-ga-scale', 'deepspeed', '>=0.16.0,<0.19.3', '0.19.3', 'gradfix.fixes.deepspeed.pipeline_ga_scale', 'deepspeed'),
    ('ds-scale-wrt-gas-ignored', 'deepspeed', '>=0.18.3,<0.18.4', '0.18.4', 'gradfix.fixes.deepspeed.scale_wrt_gas_ignored', 'deepspeed'),
    ('ds-zero2-epilogue-reset', 'deepspeed', '>=0.17.6,<0.18.3', '0.18.3', 'gradfix.fixes.deepspeed.zero2_epilogue_reset', 'deepspeed'),
    ('ds-zero2-offload-ga', 'deepspeed', '>=0.15.2,<0.19.0', '0.19.0', 'gradfix.fixes.deepspeed.zero2_offload_ga', 'deepspeed'),
    ('ds-zero2-offload-multi-backward', 'deepspeed', '<0.19.0', '0.19.0', 'gradfix.fixes.deepspeed.zero2_offload_multi_backward', 'deepspeed'),
    ('hf-ddp-no-sync-inverted', 'transformers', '>=4.46.2,<4.46.3', '4.46.3', 'gradfix.fixes.transformers.ddp_no_sync_inverted', 'transformers'),
    ('hf-deepspeed-double-ga-scale', 'transformers', '>=4.46.2,<4.49.0', '4.49.0', 'gradfix.fixes.transformers.deepspeed_double_ga_scale', 'transformers'),
    ('hf-dp-token-average', 'transformers', '>=4.46.2,<4.54.0', '4.54.0', 'gradfix.fixes.transformers.dp_token_average', 'transformers'),
    ('hf-loss-without-count-not-divided', 'transformers', '>=4.48.1,<4.53.0', '4.53.0', 'gradfix.fixes.transformers.loss_without_count', 'transformers'),
    ('hf-mean-loss-not-divided', 'transformers', '>=4.46.2,<4.48.0', '4.48.0', 'gradfix.fixes.transformers.mean_loss_not_divided', 'transformers'),
    ('hf-num-items-not-passed', 'transformers', '>=4.48.0,<4.48.1', '4.48.1', 'gradfix.fixes.transformers.num_items_not_passed', 'transformers'),
    ('hf-partial-window-ga-divisor', 'transformers', '>=4.46.2,<4.55.0', '4.55.0', 'gradfix.fixes.transformers.partial_window', 'transformers'),
    ('lf-mm-token-sum', 'llamafactory', '>=0.9.3', 'none', 'gradfix.fixes.llamafactory.mm_token_sum', 'llamafactory'),
    ('openrlhf-ppo-actor-dynamic-batch-boundary', 'openrlhf', '>=0.8.6', 'none', 'gradfix.fixes.openrlhf.ppo_actor_dynamic_batch_boundary', 'openrlhf'),
    ('openrlhf-ppo-actor-microbatch-mean-dp', 'openrlhf', '>=0.10.3,<0.10.4', '0.10.4', 'gradfix.fixes.openrlhf.ppo_actor_microbatch_mean_dp', 'openrlhf'),
    ('openrlhf-ppo-actor-microbatch-mean', 'openrlhf', '>=0.7.0,<0.10.3', '0.10.4', 'gradfix.fixes.openrlhf.ppo_actor_microbatch_mean', 'openrlhf'),
    ('openrlhf-ppo-critic-dynamic-batch-boundary', 'openrlhf', '>=0.8.6', 'none', 'gradfix.fixes.openrlhf.ppo_critic_dynamic_batch_boundary', 'openrlhf'),
    ('openrlhf-ppo-critic-microbatch-mean-dp', 'openrlhf', '>=0.10.3,<0.10.4', '0.10.4', 'gradfix.fixes.openrlhf.ppo_critic_microbatch_mean_dp', 'openrlhf'),
    ('openrlhf-ppo-critic-microbatch-mean', 'openrlhf', '>=0.7.0,<0.10.3', '0.10.4', 'gradfix.fixes.openrlhf.ppo_critic_microbatch_mean', 'openrlhf'),
    ('openrlhf-ppo-dynamic-batch-sample-fraction', 'openrlhf', '>=0.8.6,<0.10.3', '0.10.3', 'gradfix.fixes.openrlhf.ppo_dynamic_batch_sample_fraction', 'openrlhf'),
    ('openrlhf-sft-epoch-boundary', 'openrlhf', '>=0.10.4,<0.11.2', '0.11.2', 'gradfix.fixes.openrlhf.sft_epoch_boundary', 'openrlhf'),
    ('openrlhf-sft-gptlm-mean', 'openrlhf', '<0.7.0', '0.10.4', 'gradfix.fixes.openrlhf.sft_gptlm_mean', 'openrlhf'),
    ('openrlhf-sft-microbatch-mean-dp', 'openrlhf', '>=0.10.3,<0.10.4', '0.10.4', 'gradfix.fixes.openrlhf.sft_microbatch_mean_dp', 'openrlhf'),
    ('openrlhf-sft-microbatch-mean', 'openrlhf', '>=0.7.0,<0.10.3', '0.10.4', 'gradfix.fixes.openrlhf.sft_microbatch_mean', 'openrlhf'),
    ('trl-grpo-truncated-denominator', 'trl', '>=0.22.0,<1.9.0', '1.9.0', 'gradfix.fixes.trl.grpo_truncated_denominator', 'trl'),
    ('trl-grpo-window-normaliser', 'trl', '>=0.22.0,<1.9.1', '1.9.1', 'gradfix.fixes.trl.grpo_window_normaliser', 'trl'),
]
# generated: end

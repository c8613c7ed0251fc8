"""Reading preference data from wherever the recipe points, splitting off held-out pairs, and choosing which
rows train.

Files are read by this module rather than by ``datasets`` so that a bad line, a wrong encoding, a CSV row
with a field too many or a null field is reported with its line or row number instead of an Arrow cast
error. Every decision that changes which rows train (``max_train_pairs``, a mixture's ``fraction``) is made
by ``sample_rows``, after a seeded shuffle, and printed with the counts that train.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import io
import json
import os
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dpo_recipe.config.schema import DataSection
from dpo_recipe.data.forms import FORM_EXPLAINED, SFT_FORMS, Conversion, to_standard
from dpo_recipe.data.generator import generate_pairs
from dpo_recipe.data.lint import LintReport, lint, lint_unpaired
from dpo_recipe.errors import DataError
from dpo_recipe.utils.hub import http_status

BUILTIN_SOURCE = "builtin:ja-preferences"
FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")

Rows = list[dict[str, Any]]


def read_source(source: str, *, num_pairs: int = 1000, seed: int = 0, revision: str | None = None) -> dict[str, Rows]:
    """Rows by split from the builtin generator, a file, a dataset directory or a Hub id."""
    if source == BUILTIN_SOURCE:
        return generate_pairs(num_pairs=num_pairs, seed=seed)
    path = Path(source).expanduser()
    if path.is_dir():
        return _read_directory(path)
    if path.is_file():
        return {"train": read_file(path)}
    if is_hub_id(source):
        return _read_hub(source, revision)
    nearby = (
        difflib.get_close_matches(path.name, [p.name for p in path.parent.iterdir()], n=1)
        if path.parent.is_dir()
        else []
    )
    hint = f" Did you mean '{path.parent / nearby[0]}'?" if nearby else ""
    raise DataError(
        f"Data source '{source}' does not exist.{hint} Give a JSONL / CSV / Parquet file, a dataset directory "
        f"(e.g. one written by 'dpo-recipe data generate'), a Hub dataset id USER/NAME, or {BUILTIN_SOURCE}."
    )


def is_hub_id(source: str) -> bool:
    """USER/NAME that is not a local path: what read_source fetches from the Hub. A USER that is a local folder
    (``data/ja-preferencs``) makes it a path: a misspelt folder is named as missing, not fetched."""
    path = Path(source).expanduser()
    return (
        source.count("/") == 1
        and not source.startswith((".", "/", "~"))
        and not path.suffix
        and not path.exists()
        and not path.parent.is_dir()
    )


def pin_hub_revision(data: DataSection) -> DataSection:
    """The same section with a Hub dataset's branch or tag replaced by its commit id.

    Training records the resolved recipe, so a run trained on ``main`` today can be reproduced
    from its card after the dataset has moved on (``dpo-recipe train --from-hub``).
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    if not is_hub_id(data.source) or constants.HF_HUB_OFFLINE:
        return data
    where = f"data.source '{data.source}' (revision {data.revision or 'main'})"
    try:
        sha = HfApi().dataset_info(data.source, revision=data.revision).sha
    except HfHubHTTPError as exc:
        status = http_status(exc) or "no response"
        raise DataError(
            f"{where} cannot be read from the Hub (HTTP {status}). Check the dataset id and revision, "
            "and log in (HF_TOKEN) if it is private."
        ) from None
    except Exception as exc:  # the HTTP client's transport errors: no route, refused, timeout
        raise DataError(
            f"{where}: the Hub cannot be reached ({type(exc).__name__}). Check the network, or set "
            "HF_HUB_OFFLINE=1 to use a cached copy."
        ) from None
    return dataclasses.replace(data, revision=sha)


def read_file(path: Path) -> Rows:
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise DataError(
            f"{path}: unsupported file type '{suffix or '(none)'}'. Use one of {', '.join(FILE_SUFFIXES)} "
            "with columns prompt / chosen / rejected."
        )
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty. Write at least one prompt / chosen / rejected row.")
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
            raise DataError(f"{path}: not a readable Parquet file ({exc}). Re-export it.") from None
    text = _decode(path)
    if suffix == ".csv":
        return _csv_rows(path, text)
    if suffix == ".json" and text.lstrip().startswith("["):
        rows = _parse_json(path, text, line=1)
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise DataError(f"{path}: a .json file must hold a list of objects (or be JSON Lines).")
        return rows
    rows = []
    for number, line in jsonl_lines(text):
        row = _parse_json(path, line, line=number)
        if not isinstance(row, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object with prompt / chosen / rejected.")
        rows.append(row)
    return rows


def jsonl_lines(text: str) -> list[tuple[int, str]]:
    """The non-blank lines of JSON Lines text with their 1-based numbers.

    Split on ``\\n`` only (a ``\\r`` before it dropped): ``str.splitlines`` also breaks on U+2028, U+2029,
    U+0085 and other characters that JSON strings may hold raw, and would cut a valid row in two."""
    return [(number, line.removesuffix("\r")) for number, line in enumerate(text.split("\n"), 1) if line.strip()]


_EXTRA_FIELDS = object()  # csv.DictReader's key for a row's fields beyond the header


def _csv_rows(path: Path, text: str) -> Rows:
    """CSV rows as dicts; a row with more or fewer fields than the header is an error naming its line (an
    unquoted comma would otherwise shift the text of one column into the next)."""
    reader = csv.DictReader(io.StringIO(text, newline=""), restkey=_EXTRA_FIELDS)  # type: ignore[arg-type]
    rows = []
    for row in reader:
        if _EXTRA_FIELDS in row or None in row.values():
            header = len(reader.fieldnames or [])
            given = header + len(row.get(_EXTRA_FIELDS, [])) - sum(v is None for v in row.values())
            raise DataError(
                f"{path}, line {reader.line_num}: {given} fields, but the header has {header} "
                f"({', '.join(reader.fieldnames or [])}). Quote fields that hold commas or line breaks "
                '("like, this"), or fix the row.'
            )
        rows.append(row)
    return rows


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}, line {line}: not valid UTF-8 (byte {exc.start}). Re-save the file as UTF-8, e.g. "
            f"'iconv -f SHIFT_JIS -t UTF-8 {path.name} > fixed{path.suffix}' for Shift_JIS files."
        ) from None


def _parse_json(path: Path, text: str, line: int) -> Any:
    """JSON text parsed; a ``\\uD800``-style escape of half a surrogate pair is an error too: it is no
    character, so no tokenizer or file can hold it."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}, line {line + exc.lineno - 1}: not valid JSON ({exc.msg}). Fix or remove the line."
        ) from None
    except RecursionError:
        raise DataError(
            f"{path}, line {line}: nested too deeply to read (lists or objects inside each other thousands of levels "
            "down). Flatten the row or remove it."
        ) from None
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise DataError(
                f"{path}, line {line}: holds a lone surrogate escape (\\u{ord(exc.object[exc.start]):04x}), half "
                "of a character that is not text. Re-export the file from its source, or fix the escape."
            ) from None
    return value


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # the only way JSON text can hold a surrogate


def _read_directory(path: Path) -> dict[str, Rows]:
    import datasets

    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        try:
            loaded = datasets.load_from_disk(str(path))
        except IndexError:  # datasets 5.2 cannot load a saved split that has zero rows
            return _read_saved_arrow(path)
    else:
        try:
            loaded = datasets.load_dataset(str(path))
        except Exception as exc:
            raise DataError(f"{path}: no dataset found in this directory ({exc}).") from None
    if isinstance(loaded, datasets.Dataset):
        return {"train": _rows(loaded)}
    return {name: _rows(split) for name, split in loaded.items()}


def _read_saved_arrow(path: Path) -> dict[str, Rows]:
    """Read a ``save_to_disk`` directory's Arrow files directly (the layout is state.json per split)."""
    import pyarrow as pa

    names = (
        json.loads((path / "dataset_dict.json").read_text())["splits"]
        if (path / "dataset_dict.json").exists()
        else [""]
    )
    splits = {}
    for name in names:
        folder = path / name
        files = json.loads((folder / "state.json").read_text())["_data_files"]
        rows: Rows = []
        for entry in files:
            with pa.memory_map(str(folder / entry["filename"])) as source:
                rows += pa.ipc.open_stream(source).read_all().to_pylist()
        splits[name or "train"] = rows
    return splits


def _rows(split: Any) -> Rows:
    return split.to_list() if len(split) else []  # datasets 5.2 fails on to_list() of an empty split


def _read_hub(repo_id: str, revision: str | None) -> dict[str, Rows]:
    import datasets

    try:
        loaded = datasets.load_dataset(repo_id, revision=revision)
    except Exception as exc:  # datasets raises the HTTP client's, its own and the filesystem's errors
        raise DataError(
            f"'{repo_id}' (read as a Hub dataset id, revision {revision or 'main'}) cannot be read "
            f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else 'no detail'}). "
            "If it is a local folder, check its name; on the Hub, check the id, the network and HF_TOKEN, or set "
            "HF_HUB_OFFLINE=1 to use a cached copy."
        ) from None
    return {name: _rows(split) for name, split in loaded.items()}


def topic_of(row: dict[str, Any]) -> str | None:
    """The group ``hold_out`` keeps on one side by default: the row's topic, if it has one."""
    return None if row.get("topic") is None else str(row["topic"])


def hold_out(
    rows: Rows, test_size: float, seed: int, group: Callable[[dict[str, Any]], str | None] = topic_of
) -> tuple[Rows, Rows]:
    """Split off a seeded share as a test set, whole groups (topics by default) to one side, so no held-out
    topic was trained on; a row without a group is one of its own (a topic column some rows lack)."""
    keys = [group(row) for row in rows]
    if any(key is not None for key in keys):
        keys = [(0, key) if key is not None else (1, index) for index, key in enumerate(keys)]
        groups = sorted(set(keys))
        held = set(random.Random(seed).sample(groups, max(1, round(len(groups) * test_size))))
        return [r for r, k in zip(rows, keys, strict=True) if k not in held], [
            r for r, k in zip(rows, keys, strict=True) if k in held
        ]
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    cut = max(1, round(len(rows) * test_size))
    test = set(order[:cut])
    return [r for i, r in enumerate(rows) if i not in test], [r for i, r in enumerate(rows) if i in test]


def hold_out_prompts(rows: Rows, test_size: float, seed: int) -> tuple[Rows, Rows]:
    """``hold_out`` by topic, or by prompt where a row has no topic: a prompt's rows (KTO's desirable and
    undesirable answers, plain prompt rows) stay on one side, so no held-out prompt is trained on."""
    return hold_out(rows, test_size, seed, group=lambda row: topic_of(row) or prompt_key(row["prompt"]))


def prompt_key(prompt: Any) -> str:
    """A prompt (text or messages) as one comparable string: the same prompt read twice gives the same key."""
    return json.dumps(prompt, ensure_ascii=False)


def sample_rows(rows: Rows, limit: int | None, seed: int) -> Rows:
    """At most ``limit`` of ``rows``, chosen after a seeded shuffle and kept in their order: the one place that
    cuts rows (data.max_train_pairs / max_eval_pairs, a mixture's fraction), so which rows train never depends
    on how a file is sorted (all desirable rows first, one source after another)."""
    if limit is None or len(rows) <= limit:
        return rows
    return [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), limit))]


def warning_notes(report: LintReport) -> list[str]:
    """The linter's warnings as lines the dry run and a real run print (kind, count, first rows), not a count."""
    return [
        f"lint warning: {f.check}, "
        + (f"{len(f.rows)} rows of split '{f.split}' (rows {f.rows_text(5)})" if f.rows else f"split '{f.split}'")
        + f": {f.message}"
        for f in report.findings
        if f.severity == "warning"
    ]


def kept_note(data: DataSection, train: Rows, before: int) -> list[str]:
    """What data.max_train_pairs left to train on, per source in a mixture: the counts that really train."""
    if len(train) == before:
        return []
    per_source = ""
    if data.sources:
        counts = ", ".join(
            f"{entry['source']} {sum(row.get(SOURCE_COLUMN) == entry['source'] for row in train)}"
            for entry in data.sources
        )
        per_source = f" ({counts})"
    return [
        f"data.max_train_pairs {data.max_train_pairs}: {len(train)} of {before} training rows{per_source}, "
        f"chosen after a shuffle seeded by data.seed {data.seed}"
    ]


def load_preference_splits(
    data: DataSection, source_name: str | None = None, conversion: Conversion | None = None
) -> tuple[Rows, Rows, LintReport]:
    """Train and held-out rows for a recipe in the standard form, linted; raises DataError on lint errors.

    The report's notes say which form the rows were read in and how they were mapped or paired.
    ``conversion``: the source already read (``converted_source``), so it is not read twice."""
    name = source_name or (data.source if not data.sources else "data.sources")
    conversion = conversion or converted_source(data)
    if conversion.findings:
        raise DataError(lint_error_message(name, LintReport(conversion.findings, {})))
    if conversion.form in SFT_FORMS:
        raise DataError(
            f"{name} holds one answer a row with no judgement ({conversion.form} form: "
            f"{FORM_EXPLAINED[conversion.form]}), the data of supervised fine-tuning; DPO trains on two answers to "
            "one prompt. Train it with training.objective: sft (e.g. --set training.objective=sft, or the "
            f"tiny-ja-sft recipe), or give pairs (prompt / chosen / rejected) for DPO."
        )
    if conversion.one_answer:
        raise DataError(
            f"{name} holds unpaired preference data (prompt / completion / label: one answer a row, judged desirable "
            "or not), but DPO trains on two answers to one prompt. Train it with training.objective: kto (TRL's "
            "KTOTrainer; e.g. --set training.objective=kto, or the tiny-ja-kto / "
            "gemma3-270m-ja-kto recipes), or give pairs (rows with prompt / chosen / rejected) for DPO; "
            f"'dpo-recipe data lint {name}' shows what the file holds."
        )
    train, test = train_and_held_out(conversion, data, name)
    report = lint({data.train_split: train, data.test_split: test})
    if report.errors:
        raise DataError(lint_error_message(name, report))
    before = len(train)
    train, test = sample_rows(train, data.max_train_pairs, data.seed), sample_rows(test, data.max_eval_pairs, data.seed)
    notes = [*conversion.notes, *kept_note(data, train, before), *warning_notes(report)]
    report = dataclasses.replace(report, notes=notes)
    if data.as_conversation:
        train, test = [as_conversation(r) for r in train], [as_conversation(r) for r in test]
    return train, test, report


def train_and_held_out(
    conversion: Conversion,
    data: DataSection,
    name: str,
    hold: Callable[[Rows, float, int], tuple[Rows, Rows]] = hold_out,
) -> tuple[Rows, Rows]:
    """The rows of ``data.train_split`` and the held-out ones: the source's ``data.test_split`` where it has one,
    else ``data.test_size`` of the training rows split off by ``hold`` (KTO's keeps a prompt's rows together),
    else none."""
    splits = conversion.splits
    if data.train_split not in splits:
        raise DataError(f"{name}: no split '{data.train_split}' (found: {', '.join(splits)}). Set data.train_split.")
    train = splits[data.train_split]
    if data.test_split in splits:
        return train, splits[data.test_split]
    if data.test_size > 0:
        return hold(train, data.test_size, data.seed)
    return train, []


def converted_source(data: DataSection) -> Conversion:
    """``data.source`` read and in the standard form, or the mixture ``data.sources`` names."""
    if data.sources:
        return mixed_sources(data)
    raw = read_source(data.source, num_pairs=data.num_pairs, seed=data.seed, revision=data.revision)
    return to_standard(raw, data)


SOURCE_COLUMN = "data_source"  # each row of a mixture: the source it came from (a file, directory or Hub id)


def mixed_sources(data: DataSection) -> Conversion:
    """Every source of ``data.sources`` in its own form, mixed into one training split (and one test split
    of the sources that have one), each row's source in a ``data_source`` column.

    The rows are mixed by index with ``datasets.interleave_datasets`` (weights: probabilities, seeded, until
    a source runs out) or ``concatenate_datasets``; ``fraction`` takes a seeded sample of a source's rows,
    in their order. Sources must agree on text or messages (``data.as_conversation`` makes text messages).
    """
    import datasets

    from dpo_recipe.config.checks import source_section

    notes: list[str] = []
    findings: list[Any] = []
    parts: list[tuple[str, Rows, Rows]] = []  # (source, training rows, test rows)
    forms, source_forms = set(), {}
    for index, entry in enumerate(data.sources):
        section = source_section(data, entry)
        raw = read_source(section.source, num_pairs=section.num_pairs, seed=section.seed, revision=section.revision)
        conversion = to_standard(raw, section)
        label = f"data.sources[{index}] {section.source}"
        notes += [f"{label}: {note}" for note in conversion.notes]
        findings += [dataclasses.replace(f, split=f"{section.source}:{f.split}") for f in conversion.findings]
        forms.add(conversion.one_answer)
        source_forms[section.source] = conversion.form
        if conversion.findings:
            continue
        if section.train_split not in conversion.splits:
            raise DataError(
                f"{label}: no split '{section.train_split}' (found: {', '.join(conversion.splits)}). Set its "
                "split key to one of them."
            )
        rows = conversion.splits[section.train_split]
        if not rows:
            raise DataError(
                f"{label}: no training rows in split '{section.train_split}' (read as {conversion.form}). "
                "Remove the source from data.sources, or give it rows."
            )
        if "fraction" in entry:
            rows = sample_rows(rows, max(1, round(len(rows) * entry["fraction"])), data.seed)
        test = conversion.splits.get(data.test_split, []) if data.test_split != section.train_split else []
        tagged = [[{**r, SOURCE_COLUMN: section.source} for r in side] for side in (rows, test)]
        if data.as_conversation:
            tagged = [[as_conversation(r) for r in side] for side in tagged]
        parts.append((section.source, *tagged))
    if findings:
        return Conversion({}, notes, findings)
    if len(forms) > 1:
        raise DataError(
            "data.sources mixes unpaired sources (prompt / completion / label) with pairs; a mixture holds one kind. "
            "Remove the unpaired sources, or convert the pairs with 'dpo-recipe data convert PAIRS --to unpaired'."
        )
    kinds = {source: isinstance(train[0]["prompt"], str) for source, train, _ in parts if train}
    if len(set(kinds.values())) > 1:
        text = ", ".join(source for source, is_text in kinds.items() if is_text)
        raise DataError(
            f"data.sources: {text} hold text pairs and the others chat messages; one training set holds one form. "
            "Set data.as_conversation: true to read text pairs as one user turn and one assistant answer."
        )
    weights = [entry.get("weight") for entry in data.sources]
    indices = [
        datasets.Dataset.from_dict({"part": [i] * len(train), "row": list(range(len(train)))})
        for i, (_, train, _) in enumerate(parts)
    ]
    if all(w is not None for w in weights):
        total = sum(weights)
        order = datasets.interleave_datasets(indices, probabilities=[w / total for w in weights], seed=data.seed)
        shares = ", ".join(f"{w / total:.2f}" for w in weights)
        how = f"interleaved with probabilities {shares} (seed {data.seed}) until a source ran out"
    else:
        order = datasets.concatenate_datasets(indices)
        how = "concatenated"
    train = _aligned([parts[p][1][r] for p, r in zip(order["part"], order["row"], strict=True)])
    test = _aligned([row for _, _, rows in parts for row in rows])
    counts = ", ".join(f"{source} {sum(r[SOURCE_COLUMN] == source for r in train)}" for source, _, _ in parts)
    notes.append(
        f"mixture: {len(train)} training rows ({counts}), {how}; each row's source is in column {SOURCE_COLUMN}"
    )
    splits = {data.train_split: train, **({data.test_split: test} if test else {})}
    return Conversion(splits, notes, [], "unpaired" if True in forms else "standard", source_forms)


def source_entries(data: DataSection) -> list[dict[str, Any]]:
    """The sources a recipe names, as it names them: source, form (``auto`` until read), split and share."""
    if not data.sources:
        return [{"source": data.source, "form": data.form, "split": data.train_split, "share": "all rows"}]
    return [
        {
            "source": entry["source"],
            "form": entry.get("form", data.form),
            "split": entry.get("split", data.train_split),
            "share": f"weight {entry['weight']:g}"
            if "weight" in entry
            else f"fraction {entry['fraction']:g}"
            if "fraction" in entry
            else "all rows",
        }
        for entry in data.sources
    ]


def provenance(data: DataSection, conversion: Conversion, train: Rows, held_out: Rows) -> list[dict[str, Any]]:
    """``source_entries`` once read: each source's form as read (detected or named) and how many of the rows
    that trained and that were held out are its own (``data_source`` in a mixture). The model card's data
    table, so what an adapter learned from is read where the model is, not only in the recipe."""
    if not data.sources:
        (entry,) = source_entries(data)
        return [{**entry, "form": conversion.form, "training_rows": len(train), "held_out_rows": len(held_out)}]
    return [
        {
            **entry,
            "form": conversion.source_forms.get(entry["source"], entry["form"]),
            "training_rows": sum(row.get(SOURCE_COLUMN) == entry["source"] for row in train),
            "held_out_rows": sum(row.get(SOURCE_COLUMN) == entry["source"] for row in held_out),
        }
        for entry in source_entries(data)
    ]


def _aligned(rows: Rows) -> Rows:
    """Rows of several sources with one set of columns (None where a source lacks one): one Arrow schema."""
    columns = list(dict.fromkeys(column for row in rows for column in row))
    return [{column: row.get(column) for column in columns} for row in rows]


def as_conversation(row: dict[str, Any]) -> dict[str, Any]:
    """A plain-text pair (or unpaired row, for KTO) as messages: the prompt one user turn, each answer (the
    completion) one assistant turn."""
    if not isinstance(row["prompt"], str):
        return row
    answer = {k: [{"role": "assistant", "content": row[k]}] for k in ("chosen", "rejected", "completion") if k in row}
    return {**row, "prompt": [{"role": "user", "content": row["prompt"]}], **answer}


def standard_splits(raw: dict[str, Rows], data: DataSection) -> tuple[dict[str, Rows], LintReport]:
    """Every split of ``raw`` in the standard form, and the lint report on them all (the data commands' view).

    Rows the conversion refuses are the report's errors, and the linter's own checks wait until they are
    fixed: their row numbers would not match the file's. Unpaired rows stay unpaired, linted as such.
    """
    conversion = to_standard(raw, data)
    return conversion.splits, _linted(conversion)


def _linted(conversion: Conversion) -> LintReport:
    """The conversion's findings, or (when there are none) the linter's report on its rows, with its notes."""
    if conversion.findings:
        return LintReport(conversion.findings, {}, conversion.notes, conversion.form)
    check = lint_unpaired if conversion.one_answer else lint
    return dataclasses.replace(check(conversion.splits), notes=conversion.notes, form=conversion.form)


def checked_out(out: Path, source: str, *, overwrite: bool) -> Path:
    """``out`` if ``data convert`` may write it, checked before anything is read: not the source itself (not
    even with ``overwrite``: the source would be lost to its own conversion), not an existing file without
    ``overwrite``, and in a folder that is one and can be written."""
    where = out.expanduser()
    given = Path(source).expanduser()
    if where.resolve() == given.resolve() or (where.exists() and given.exists() and where.samefile(given)):
        raise DataError(
            f"--out {out} is the source itself; converting it in place would replace the data it was read from. "
            "Write to another file, check it, then move it."
        )
    if where.is_dir():
        raise DataError(f"--out {out} is a folder; name the file to write (a folder is never replaced).")
    if where.exists() and not overwrite:
        raise DataError(f"{out} already exists. Choose another --out or pass --overwrite.")
    folder = next(parent for parent in where.absolute().parents if parent.exists())
    if not folder.is_dir():
        raise DataError(f"--out {out}: {folder} is a file, not a folder. Choose an --out in a folder.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DataError(f"--out {out}: {folder} cannot be written (permissions or a read-only disk). Choose another.")
    return where


def write_rows(rows: Rows, out: Path, file_format: str) -> Path:
    """``rows`` as JSON Lines or Parquet at ``out`` (``checked_out``), whole or not at all."""
    from dpo_recipe.utils.files import write_file_atomically

    def write(staging: Path) -> None:
        if file_format == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows), staging)
        else:
            staging.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")

    try:
        return write_file_atomically(out, write)
    except OSError as exc:  # a disk that fills or turns read-only while writing
        raise DataError(f"--out {out} could not be written ({exc.strerror or exc}); nothing was written.") from None


def lint_error_message(name: str, report: LintReport) -> str:
    parts = [f"{f.check} in split '{f.split}' rows {f.rows_text(5)}: {f.message}" for f in report.errors]
    return (
        f"{name}: the data failed the linter: "
        + "; ".join(parts)
        + f". Run 'dpo-recipe data lint {name}' for the full table."
    )

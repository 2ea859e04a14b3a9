"""Tasks and mixtures declared as data, seqio-style, without seqio's TensorFlow.

A Task names a source of raw records, the small pure preprocessors that turn one record into a model example, and
its kind: the declaration in `ofa_jax.data.tasks.TASKS` that says how it is prompted, decoded and scored. A Mixture
samples tasks at fixed rates. Both live in registries looked up by name.
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

# A preprocessor maps one example to the next stage, given a generator seeded by (pipeline seed, task, position),
# so the same seed always gives the same examples. It raises DropExample for a record it cannot use.
Preprocessor = Callable[[dict[str, Any], np.random.Generator], dict[str, Any]]


class DropExample(Exception):
    """A record cannot become an example; `reason` (short, stable) is what the drop counts are keyed by."""

    def __init__(self, reason: str, detail: str = ''):
        super().__init__(f'{reason}: {detail}' if detail else reason)
        self.reason = reason
        self.detail = detail


class Unlabeled(DropExample):
    """A record without the reference its target is made from (VQA test-dev / test-std questions have no answers):
    training drops it as `reason`; evaluation predicts it from `example`, which holds its model inputs."""

    def __init__(self, reason: str, example: dict[str, Any]):
        super().__init__(reason)
        self.example = example


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    source: Any  # random access: len() and [index] -> raw record dict (see ofa_jax.data.sources)
    preprocessors: Sequence[Preprocessor]
    kind: str = ''  # a name in ofa_jax.data.tasks.TASKS; '' for a task of mixed kinds (OFA's vision-language rows)
    prompt_type: str = 'none'  # what its examples put before the answer in the decoder (pipeline.PROMPT_TYPES)
    answers: tuple[str, ...] = ()  # a closed answer set its data declares (VQA's answer list): evaluation scores it
    # One of OFA's extra pretraining tasks (text, image and detection): its examples form a sub-batch of their own,
    # with longer sources and targets and their loss normalized on its own (OFA's second sample list).
    extra: bool = False

    def preprocess(
        self, record: dict[str, Any], rng: np.random.Generator, keep_unlabeled: bool = False
    ) -> dict[str, Any]:
        """The record's example; with keep_unlabeled, a record without a reference gives its inputs (no
        'target_ids') instead of being dropped."""
        example = dict(record)
        if '_error' in example:  # the source could not parse this record
            raise DropExample('malformed_record', example['_error'])
        try:
            for preprocessor in self.preprocessors:
                example = preprocessor(example, rng)
        except Unlabeled as unlabeled:
            if not keep_unlabeled:
                raise
            example = unlabeled.example
        example['task'] = self.name
        return example


@dataclasses.dataclass(frozen=True)
class Mixture:
    name: str
    rates: Mapping[str, float]  # task name -> relative rate

    def __post_init__(self):
        if not self.rates or any(rate <= 0 for rate in self.rates.values()):
            raise ValueError(f'mixture {self.name!r} needs positive rates, got {dict(self.rates)}')

    @property
    def task_names(self) -> list[str]:
        return list(self.rates)


class Registry:
    """Name -> Task or Mixture. Adding an existing name is an error unless `replace=True`."""

    def __init__(self, kind: str):
        self._kind = kind
        self._items: dict[str, Any] = {}

    def add(self, item: Any, replace: bool = False) -> Any:
        if item.name in self._items and not replace:
            raise ValueError(f'{self._kind} {item.name!r} is already registered')
        self._items[item.name] = item
        return item

    def get(self, name: str) -> Any:
        if name not in self._items:
            raise ValueError(f'unknown {self._kind} {name!r}; registered: {sorted(self._items)}')
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)


TaskRegistry = Registry('task')
MixtureRegistry = Registry('mixture')


def get_tasks(name: str) -> tuple[list[Task], list[float]]:
    """The tasks and rates of a mixture, or a single task at rate 1, by name."""
    if name in MixtureRegistry.names():
        mixture = MixtureRegistry.get(name)
        return [TaskRegistry.get(t) for t in mixture.task_names], list(mixture.rates.values())
    return [TaskRegistry.get(name)], [1.0]

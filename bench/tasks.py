"""Tasks as data: a reward with its settings, a training prompt set and a held-out evaluation prompt set.

Each task is one JSON file in ``bench/data/tasks/`` (like lm-evaluation-harness's task YAMLs)::

    {"name": "shapes-circles-to-squares", "suite": "testbed", "backbone": "shapes",
     "reward": "shapes-classifier", "reward_kwargs": {"target": "square"},
     "eval_rewards": {...optional: name -> kwargs; the first is the headline...},
     "train_prompts": "shapes_circles", "eval_prompts": "shapes_circles_eval", "description": "...",
     "cross_rewards": {...optional: the world's other rewards, reported beside it (reward hacking)...}}

Prompt lists are files in ``bench/data/prompts/`` (one prompt a line). ``suite`` is ``testbed`` (the shapes world,
CPU) or ``real`` (Stable Diffusion and the real reward zoo).
"""
from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

TASK_DIR = Path(__file__).parent / "data" / "tasks"


@dataclass(frozen=True)
class Task:
    name: str
    reward: str
    train_prompts: str
    eval_prompts: str
    backbone: str = "shapes"
    suite: str = "testbed"
    reward_kwargs: dict[str, Any] = field(default_factory=dict)
    eval_rewards: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str = ""
    #: reward whose image tower embeds evaluation images for the diversity metric (same for every method of the task)
    diversity_reward: str | None = None
    #: the world's other rewards, evaluated beside the task's own to expose reward hacking (name -> kwargs)
    cross_rewards: dict[str, dict[str, Any]] = field(default_factory=dict)

    def rewards_needed(self) -> list[str]:
        names = [self.reward, *self.eval_rewards, *self.cross_rewards]
        return list(dict.fromkeys(names))

    def cell_kwargs(self, method: str | None = None) -> dict[str, Any]:
        """CellSpec fields for this task (the method does not change them: a gradient method on a
        non-differentiable reward trains on its surrogate inside ``bench.cell``)."""
        from bench.cell import read_prompts

        return dict(task=self.name, backbone=self.backbone, reward=self.reward, reward_kwargs=dict(self.reward_kwargs),
                    eval_rewards={k: dict(v) for k, v in self.eval_rewards.items()},
                    train_prompts=read_prompts(self.train_prompts), eval_prompts=read_prompts(self.eval_prompts),
                    diversity_reward=self.diversity_reward,
                    cross_rewards={k: dict(v) for k, v in self.cross_rewards.items()} or None)


def _from_file(path: Path) -> Task:
    try:
        data = json.loads(path.read_text())
        return Task(**data)
    except (json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"malformed task file {path}: {err}") from None


@lru_cache(maxsize=1)
def _registry() -> dict[str, Task]:
    tasks = {}
    for path in sorted(TASK_DIR.glob("*.json")):
        task = _from_file(path)
        tasks[task.name] = task
    return tasks


def register(task: Task) -> Task:
    """Add a task from code (plugins, tests); the JSON files remain the project's own tasks."""
    _registry()[task.name] = task
    return task


def available(pattern: str = "*", suite: str | None = None) -> list[str]:
    return sorted(n for n, t in _registry().items()
                  if fnmatch.fnmatch(n, pattern) and (suite is None or t.suite == suite))


def get(name: str) -> Task:
    tasks = _registry()
    if name not in tasks:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(sorted(tasks))}")
    return tasks[name]


def describe() -> dict[str, str]:
    return {n: f"[{t.suite}] {t.description} (reward {t.reward}"
               f"{' ' + json.dumps(t.reward_kwargs) if t.reward_kwargs else ''}, backbone {t.backbone})"
            for n, t in _registry().items()}


def missing_rewards(task: Task) -> list[str]:
    """Rewards the task needs that are not registered (yet): the grid skips such tasks with a note."""
    import rewards

    have = set(rewards.available())
    return [r for r in task.rewards_needed() if r not in have]

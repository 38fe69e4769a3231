"""The real Pulumi CLI on a throwaway workspace: a project copy, a file backend, a PULUMI_HOME.

Nothing is written into the work tree: the project's program files are copied into a temporary
folder whose `Pulumi.yaml` points at the work tree's virtualenv, and each stack's config file
lives in that copy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from components.stack_file import ROOT, path_of, read_config
from tools import pulumi_cli
from tools.stack import exported_resources

# What the program reads from its own folder.
PROJECT_FILES: Final = ("Pulumi.yaml", "__main__.py", "requirements.txt")
PROJECT_DIRS: Final = ("components", "services")
IGNORED: Final = shutil.ignore_patterns("__pycache__", "*.pyc", ".venv*", "node_modules", "tests")


class PulumiError(AssertionError):
    """A pulumi command that should have succeeded did not."""


@dataclass
class Run:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def json(self) -> Any:
        return json.loads(self.stdout)


@dataclass
class PulumiWorkspace:
    bin_dir: Path
    root: Path
    kubeconfig: Path
    # The seconds of each run, by pulumi command (`up`, `preview`, ...): where a session went.
    spent: dict[str, list[float]] = field(default_factory=dict)

    @property
    def project_dir(self) -> Path:
        return self.root / "project"

    @property
    def backend_dir(self) -> Path:
        return self.root / "backend"

    @property
    def home(self) -> Path:
        return self.root / "pulumi-home"

    @property
    def temporary_dir(self) -> Path:
        """The runs' TMPDIR: the Kubernetes provider writes a kubeconfig file there at each run
        and leaves it; here it goes with the session's folder."""
        return self.root / "tmp"

    def create(self) -> None:
        self.project_dir.mkdir(parents=True)
        self.backend_dir.mkdir()
        self.home.mkdir()
        self.temporary_dir.mkdir()
        for name in PROJECT_FILES:
            if (ROOT / name).exists():
                shutil.copy2(ROOT / name, self.project_dir / name)
        for name in PROJECT_DIRS:
            if (ROOT / name).is_dir():
                shutil.copytree(ROOT / name, self.project_dir / name, ignore=IGNORED)
        project = yaml.safe_load((self.project_dir / "Pulumi.yaml").read_text())
        runtime = project.get("runtime")
        if isinstance(runtime, dict):
            options = runtime.setdefault("options", {})
            venv = options.get("virtualenv", ".venv")
            options["virtualenv"] = str((ROOT / venv).resolve())
        (self.project_dir / "Pulumi.yaml").write_text(yaml.safe_dump(project, sort_keys=False))

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("PULUMI_") and k not in ("VIRTUAL_ENV", "KUBECONFIG")
        }
        env.update(
            {
                "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                "PULUMI_HOME": str(self.home),
                "PULUMI_BACKEND_URL": f"file://{self.backend_dir}",
                "PULUMI_CONFIG_PASSPHRASE": "",
                "PULUMI_SKIP_UPDATE_CHECK": "true",
                "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
                "PULUMI_DISABLE_CHECKPOINT_BACKUPS": "true",
                # Nothing the suite runs may reach any cluster but the throwaway one.
                "KUBECONFIG": str(self.kubeconfig),
                "TMPDIR": str(self.temporary_dir),
                "NO_COLOR": "1",
            }
        )
        return env

    def run(
        self, *args: str, check: bool = True, timeout: float = 900, stdin: str | None = None
    ) -> Run:
        start = time.monotonic()
        proc = pulumi_cli.run(
            ["--color", "never", *args],
            binary=str(self.bin_dir / "pulumi"),
            cwd=self.project_dir,
            env=self.env(),
            stdin=stdin,
            timeout=timeout,
        )
        run = Run(list(args), proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)
        self.spent.setdefault(args[0], []).append(run.seconds)
        if check and proc.returncode != 0:
            raise PulumiError(
                f"pulumi {' '.join(args)} exited {proc.returncode}\n"
                f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
            )
        return run

    def tool(self, module: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        """`python -m tools.<module> args` (the code of a `make` target) with the workspace's CLI,
        backend and cluster, from its project copy with the work tree's code importable; its
        exit status is the caller's to check."""
        return subprocess.run(
            [sys.executable, "-m", f"tools.{module}", *args],
            cwd=self.project_dir,
            env={**self.env(), "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def stack_file(self, stack: str) -> Path:
        return path_of(stack, self.project_dir)

    def init_stack(self, stack: str, config: dict[str, Any], secrets: dict[str, str]) -> None:
        """`pulumi stack init`, the structured config written into the copy's stack file, the
        secrets through one `pulumi config set-all --secret` (encrypted with the empty
        passphrase; one CLI run instead of one a secret). The values go on its command line: the
        throwaway stacks' own secrets, and as `key=value` none can read as a flag; rotations
        use `set_secret`."""
        self.run("stack", "init", stack)
        path = self.stack_file(stack)
        document = yaml.safe_load(path.read_text()) if path.exists() else None
        document = document or {}
        document.setdefault("config", {}).update(config)
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        if secrets:
            pairs = [
                part for key, value in secrets.items() for part in ("--secret", f"{key}={value}")
            ]
            self.run("config", "set-all", "--stack", stack, *pairs)

    def set_secret(self, stack: str, key: str, value: str) -> None:
        """`pulumi config set --secret` with the value on stdin, as the README's rotation does:
        a value beginning with `-` would read as a flag on the command line, and a secret on
        the command line shows in the process table."""
        self.run("config", "set", "--stack", stack, "--secret", key, stdin=value)

    def config(self, stack: str) -> dict[str, Any]:
        """The stack file's config as `init_stack` and `set_config` wrote it (secrets as their
        ciphertext)."""
        return read_config(stack, self.project_dir)

    def get_config(self, stack: str, key: str, default: Any = None) -> Any:
        """One (possibly nested, `a.b`) key of the stack file, `default` when it is not set (or
        set to null)."""
        section, _, sub = key.partition(".")
        value = self.config(stack).get(section)
        if sub:
            value = value.get(sub) if isinstance(value, dict) else None
        return default if value is None else value

    def set_config(self, stack: str, key: str, value: Any) -> None:
        """Set one (possibly nested, `a.b`) key with its YAML type, as a user editing the stack
        file on a pull request would."""
        path = self.stack_file(stack)
        document = yaml.safe_load(path.read_text())
        section, _, sub = key.partition(".")
        config = document["config"]
        if sub:
            config.setdefault(section, {})[sub] = value
        else:
            config[section] = value
        path.write_text(yaml.safe_dump(document, sort_keys=False))

    def export(self, stack: str) -> dict[str, Any]:
        data: dict[str, Any] = self.run("stack", "export", "--stack", stack).json()
        return data

    def resources(self, stack: str) -> list[dict[str, Any]]:
        return exported_resources(self.export(stack))

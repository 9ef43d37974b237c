"""Shared preload: the system components (core, uplink, adapters, log shipping) run forked from
supervisord instead of exec'd, so the Python modules they all load sit once in memory.

supervisord loads this as an RPC interface factory before it starts any program. `install` imports
what the configured system components run (their main modules and everything under them), freezes
those objects out of the garbage collector's reach (a collection would otherwise write to every page
and unshare it), and replaces supervisord's execve: in the child supervisord has just forked (pipes,
process group, directory and umask already set), a component with a uid of its own (MILLGATE_RUN_AS,
gateway/component_users.py) first drops to it, then a command `<this python> -m <system component>`
runs the component in place; every other command (mosquitto, functions, which run user code and must
not carry supervisord's memory) is exec'd as before. The deployment's config is validated here once
too, and handed to a forked component while it is still the current one. The process title stays the
command line, so `ps` shows the same as an exec'd component.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import importlib.util
import io
import os
import runpy
import shlex
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

# imported here, in supervisord, while argv and environ are still where the kernel put them: it
# finds the space for a process title there, which a child that has rewritten its environment cannot
import setproctitle

from gateway.component_users import drop_from_environment

if TYPE_CHECKING:
    from gateway.config_loader import LoadedConfig

# the components that run only millgate's own code; function runners are never forked
SYSTEM_COMPONENTS = frozenset(
    {"gateway.core", "gateway.uplink", "adapters.modbus", "adapters.opcua", "gateway.cloudwatch_ship"}
)
# supervisord's handlers (supervisor.options.ServerOptions.setsignals), back to what a fresh
# interpreter has
RESET_SIGNALS: dict[signal.Signals, Callable[[int, Any], Any] | signal.Handlers] = {
    signal.SIGTERM: signal.SIG_DFL,
    signal.SIGQUIT: signal.SIG_DFL,
    signal.SIGHUP: signal.SIG_DFL,
    signal.SIGCHLD: signal.SIG_DFL,
    signal.SIGUSR2: signal.SIG_DFL,
    signal.SIGINT: signal.default_int_handler,
}
# the deployment's config as supervisord found it at start: (real path, digest, loaded config)
_config: tuple[str, str, LoadedConfig] | None = None


class Preload:
    """What supervisord exposes under the `preload` RPC namespace: the modules it preloaded."""

    def __init__(self, modules: list[str], failed: dict[str, str]):
        self.modules = modules
        self.failed = failed

    def getPreloaded(self) -> dict[str, Any]:  # supervisord RPC names are camelCase
        return {"modules": self.modules, "failed": self.failed, "config": _config[0] if _config else ""}


def component_module(argv: list[str]) -> str | None:
    """The system component a command runs with this interpreter (`python -m gateway.core ...`), or None."""
    if len(argv) >= 3 and argv[1] == "-m" and argv[2] in SYSTEM_COMPONENTS:
        return argv[2]
    return None


def preload(modules: Iterable[str]) -> tuple[list[str], dict[str, str]]:
    """Import each component's main module; a failure only means that component loads its own."""
    loaded, failed = [], {}
    for module in sorted(set(modules)):
        main = _main_module(module)
        try:
            importlib.import_module(main)
        except Exception as exc:  # the component will report it when it starts
            failed[module] = f"{type(exc).__name__}: {exc}"
        else:
            loaded.append(module)
        # what it imports stays; the module itself runs afresh as __main__ in the child
        sys.modules.pop(main, None)
    return loaded, failed


def _main_module(module: str) -> str:
    spec = importlib.util.find_spec(module)
    return f"{module}.__main__" if spec is not None and spec.submodule_search_locations is not None else module


def code_stamp() -> tuple[tuple[int, int], ...]:
    """Identity of the installed code: a package update (dpkg, pip) replaces these files. A component
    forked from modules loaded before an update would run old and new code together, so once this
    changes, components are exec'd again until supervisord itself restarts."""
    stamp = []
    for module in sorted(SYSTEM_COMPONENTS):
        spec = importlib.util.find_spec(_main_module(module))
        try:
            info = os.stat(spec.origin) if spec is not None and spec.origin else None
        except OSError:
            info = None
        stamp.append((info.st_ino, info.st_mtime_ns) if info else (0, 0))
    return tuple(stamp)


def install(supervisord: Any, **_config: Any) -> Preload:
    """supervisord's rpcinterface factory: preload the configured system components, hook execve."""
    options = supervisord.options
    wanted, config_dirs = [], set()
    for group in options.process_group_configs:
        for program in group.process_configs:
            argv = shlex.split(program.command)
            module = component_module(argv)
            if module:
                wanted.append(module)
                config_dirs.add(_option(argv, "--config"))
    loaded, failed = preload(wanted)
    if len(config_dirs) == 1 and None not in config_dirs:
        try:
            preload_config(Path(str(config_dirs.pop())))
        except Exception as exc:  # each component loads (and reports) it itself
            failed["config"] = f"{type(exc).__name__}: {exc}"
    setproctitle.setproctitle(setproctitle.getproctitle())  # find the title's space now (see the import)
    gc.collect()
    gc.freeze()
    options.execve = forking_execve(options.execve, code_stamp())
    return Preload(loaded, failed)


def preload_config(config_dir: Path) -> None:
    """Load and validate the config once, here, so the forked components need not (validation alone
    writes to some 6 MB of the shared pages in each of them)."""
    global _config
    from gateway.config_loader import load_config
    from gateway.deploy_store import config_digest

    _config = (os.path.realpath(config_dir), config_digest(config_dir), load_config(config_dir))


def preloaded_config(config_dir: Path) -> LoadedConfig | None:
    """The preloaded config if it is still the one at `config_dir` (a deployment since supervisord
    started points `current` at another snapshot), else None."""
    from gateway.deploy_store import config_digest

    if _config is None:
        return None
    real, digest, loaded = _config
    if loaded.config_dir != config_dir or os.path.realpath(config_dir) != real:
        return None
    try:
        return loaded if config_digest(config_dir) == digest else None
    except OSError:
        return None


def _option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv[:-1] else None


Execve = Callable[[str, list[str], Mapping[str, str]], None]


def forking_execve(execve: Execve, stamp: tuple[tuple[int, int], ...]) -> Execve:
    """supervisord's execve, running system components in place while the code is what was preloaded."""

    def run_or_exec(filename: str, argv: list[str], env: Mapping[str, str]) -> None:
        drop_from_environment(env)  # a component with a uid of its own runs nothing as root
        module = component_module(argv)
        same_python = os.path.realpath(filename) == os.path.realpath(sys.executable)
        if module is None or not same_python or code_stamp() != stamp:
            execve(filename, argv, env)
            return
        os._exit(run_in_place(module, argv, env))

    return run_or_exec


def run_in_place(module: str, argv: list[str], env: Mapping[str, str]) -> int:
    """Run `python -m module args...` in this (freshly forked) process; return its exit status."""
    for signum, handler in RESET_SIGNALS.items():
        signal.signal(signum, handler)
    os.environ.clear()
    os.environ.update(env)
    _fresh_standard_streams()
    _set_title(argv)
    sys.argv = [module, *argv[3:]]
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = _exit_status(exc.code)
    except BaseException:
        traceback.print_exc()
        code = 1
    for thread in threading.enumerate():  # what interpreter shutdown waits for
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    return code


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _fresh_standard_streams() -> None:
    """Streams on the child's fds 0-2, as a new interpreter would have them; supervisord's own
    objects (and anything buffered in them) are left behind, never flushed."""
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)))
    sys.stdout = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(1, "w", closefd=False)), line_buffering=unbuffered, write_through=unbuffered
    )
    sys.stderr = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(2, "w", closefd=False)), errors="backslashreplace", line_buffering=True
    )


def _set_title(argv: list[str]) -> None:
    setproctitle.setproctitle(" ".join(argv))

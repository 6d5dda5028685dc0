"""Build guest programs with the system gcc into flat images, cached per user by source hash."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import re
import subprocess
import tempfile
from pathlib import Path

from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from vlbr.errors import VlbrError

from vlbr.backends.image import GuestImage

SOURCE_DIR = Path(__file__).parent / "src"
RUNTIME_DIR = SOURCE_DIR / "runtime"
LOAD_ADDRESS = 0x100000  # Guest ABI (docs/design.md)
ENTRY_SYMBOL = "_start"
CACHE_VERSION = "1"  # bump when what the cache stores, or how, changes
# Sources linked into every guest: the runtime and the branch scenarios with known records.
COMMON_SOURCES = ("runtime/entry.S", "runtime/runtime.c", "lbr_scenarios.S")
COMMON_DEPENDENCIES = ("runtime/runtime.h", "runtime/guest.ld")
CFLAGS = (
    "-std=gnu11", "-O2", "-ffreestanding", "-nostdlib", "-mno-red-zone", "-fno-pic", "-fno-pie",
    "-static", "-mgeneral-regs-only", "-masm=intel", "-fno-stack-protector",
    "-fcf-protection=none", "-fno-asynchronous-unwind-tables", "-fno-unwind-tables",
    "-fno-builtin", "-mcmodel=small", "-Wall", "-Werror=implicit-function-declaration",
)
LDFLAGS = ("-nostdlib", "-static", "-no-pie", "-Wl,--build-id=none", "-Wl,-z,noexecstack",
           "-Wl,--no-warn-rwx-segments")


class GuestBuildError(VlbrError):
    """gcc/objcopy missing or failing; the message carries the tool's output."""


def builtin_guests() -> list[str]:
    """Names of the guest programs shipped with vlbr (src/<name>.c)."""
    return sorted(p.stem for p in SOURCE_DIR.glob("*.c"))


def cache_dir() -> Path:
    base = os.environ.get("VLBR_CACHE_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "vlbr" / "guests"


def resolve_source(guest: str | os.PathLike) -> tuple[str, Path]:
    """(name, C file) for a built-in guest name or a path to a C file."""
    text = os.fspath(guest)
    if text in builtin_guests():
        return text, SOURCE_DIR / f"{text}.c"
    path = Path(text)
    if path.suffix == ".c" and path.is_file():
        return path.stem, path.resolve()
    known = ", ".join(builtin_guests())
    raise GuestBuildError(f"no guest {text!r}: give a built-in name ({known}) or a path to a .c file")


def _tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise GuestBuildError(f"{name} not found: install gcc and binutils (make system-deps)")
    return found


def _tool_version(gcc: str) -> str:
    out = subprocess.run([gcc, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0] if out.stdout else ""


def _source_key(main: Path, gcc: str) -> str:
    """Hash of everything that shapes the image (headers a user's C file includes from its
    own directory are not part of it: pass use_cache=False when editing those)."""
    digest = hashlib.sha256()
    for part in (CACHE_VERSION, *CFLAGS, *LDFLAGS, _tool_version(gcc)):
        digest.update(part.encode() + b"\0")
    for rel in (*COMMON_SOURCES, *COMMON_DEPENDENCIES):
        digest.update((SOURCE_DIR / rel).read_bytes())
    digest.update(main.read_bytes())
    return digest.hexdigest()[:32]


def _run(cmd: list[str], what: str) -> None:
    # A source in any encoding gives diagnostics in it: never fail on decoding them.
    done = subprocess.run(cmd, capture_output=True, text=True, errors="backslashreplace",
                          check=False)
    if done.returncode != 0:
        raise GuestBuildError(f"{what} failed ({Path(cmd[0]).name} exit {done.returncode}): "
                              f"{first_diagnostic(done.stderr or done.stdout)}")


_DIAGNOSTIC_ERROR = re.compile(r": (fatal )?error: ")


def first_diagnostic(output: str) -> str:
    """The first `error:` line of a compiler's output (else its first line), and how many
    lines followed, so the error stays one line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if not lines:
        return "no diagnostics"
    first = next((line for line in lines if _DIAGNOSTIC_ERROR.search(line)), lines[0])
    more = len(lines) - 1
    return first + (f" (and {more} more lines of diagnostics)" if more else "")


def read_symbols(elf_path: Path) -> tuple[int, dict[str, int]]:
    """(entry, {name: address}) from the linked ELF (pyelftools)."""
    with elf_path.open("rb") as fh:
        elf = ELFFile(fh)
        entry = elf.header["e_entry"]
        symbols: dict[str, int] = {}
        for section in elf.iter_sections():
            if not isinstance(section, SymbolTableSection):
                continue
            for sym in section.iter_symbols():
                kind = sym["st_info"]["type"]
                if sym.name and kind in ("STT_FUNC", "STT_OBJECT", "STT_NOTYPE") \
                        and sym["st_shndx"] != "SHN_UNDEF":
                    symbols.setdefault(sym.name, sym["st_value"])
    return entry, symbols


def read_code_ranges(elf_path: Path) -> tuple[tuple[int, int], ...]:
    """(start, end) of every allocated executable section: where a VMM may patch instructions
    without touching data."""
    with elf_path.open("rb") as fh:
        return tuple((sec["sh_addr"], sec["sh_addr"] + sec["sh_size"])
                     for sec in ELFFile(fh).iter_sections()
                     if sec["sh_flags"] & SH_FLAGS.SHF_EXECINSTR and sec["sh_flags"] & SH_FLAGS.SHF_ALLOC
                     and sec["sh_size"])


def _compile(main: Path, workdir: Path) -> tuple[Path, Path]:
    gcc, objcopy = _tool("gcc"), _tool("objcopy")
    sources = [str(SOURCE_DIR / rel) for rel in COMMON_SOURCES] + [str(main)]
    elf = workdir / "guest.elf"
    binary = workdir / "guest.bin"
    _run([gcc, *CFLAGS, *LDFLAGS, f"-I{SOURCE_DIR}", f"-I{RUNTIME_DIR}",
          "-T", str(RUNTIME_DIR / "guest.ld"), "-o", str(elf), *sources], f"building {main.name}")
    _run([objcopy, "-O", "binary", str(elf), str(binary)], f"objcopy of {main.name}")
    return elf, binary


def build_guest(guest: str | os.PathLike = "hello", *, use_cache: bool = True) -> GuestImage:
    """Build a built-in guest (by name) or a C file into a GuestImage linked at 0x100000."""
    name, main = resolve_source(guest)
    gcc = _tool("gcc")
    key = _source_key(main, gcc)
    cached = cache_dir() / key
    if use_cache:
        image = _load_cached(cached, name)
        if image is not None:
            return image
    with tempfile.TemporaryDirectory(prefix="vlbr-guest-") as tmp:
        elf, binary = _compile(main, Path(tmp))
        entry, symbols = read_symbols(elf)
        data = binary.read_bytes()
        if symbols.get("__image_start") != LOAD_ADDRESS:
            raise GuestBuildError(f"{main.name}: image not linked at {LOAD_ADDRESS:#x}")
        image = GuestImage(data, LOAD_ADDRESS, entry, symbols, name, read_code_ranges(elf))
        if use_cache:
            _store_cached(cached, image, elf)
    return image


def _load_cached(path: Path, name: str) -> GuestImage | None:
    try:
        meta = json.loads((path / "image.json").read_text())
        data = (path / "guest.bin").read_bytes()
    except (OSError, ValueError):
        return None
    code = tuple(tuple(r) for r in meta.get("code", ()))
    return GuestImage(data, meta["load_address"], meta["entry"], meta["symbols"], name, code)


def _store_cached(path: Path, image: GuestImage, elf: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=path.parent))
        shutil.copy(elf, staging / "guest.elf")
        (staging / "guest.bin").write_bytes(image.data)
        meta = {"load_address": image.load_address, "entry": image.entry, "symbols": image.symbols,
                "code": image.code}
        (staging / "image.json").write_text(json.dumps(meta))
        try:
            staging.rename(path)  # atomic: a concurrent builder of the same key may win
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError:
        pass  # the cache is an optimisation; a read-only home still builds

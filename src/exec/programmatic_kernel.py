# Programmatic tool calling, the kernel's side. The server runs this text in a private
# namespace inside the session's kernel, with `__ci_args = (spec, code)`, as one cell.
#
# The program runs in an event loop of its own (the kernel's loop is blocked while a cell
# runs, as for any cell). A tool is an async function: calling it announces the call to
# the server as a display_data bundle of a private MIME type and awaits a future. Calls
# made together (asyncio.gather) are announced in one bundle. The server answers with a
# control-channel message carrying the results; the kernel's control thread hands them
# to the loop, which resolves the futures, and the program goes on where it stopped.
#
# Nothing here is trusted by the server: the program can forge any announcement. The
# server checks every one against the request's tools and its own limits.

import asyncio
import builtins
import inspect
import json
import linecache
import os
import sys
import traceback
import typing

MIME = "application/vnd.code-interpreter.ptc+json"
RESULT_MESSAGE = "code_interpreter_ptc_result"
PROGRAM = "<program>"
HELPER = "<programmatic-tools>"
# Rounds of the event loop a batch waits for other ready tasks to make their calls too.
BATCH_SPINS = 64


class ToolExecutionError(Exception):
    """A tool call failed; the message is the tool's error."""


# Tracebacks name it as the program sees it, not by this helper's module.
ToolExecutionError.__module__ = "__main__"


class Bridge:
    def __init__(self, loop, token, limits):
        self.loop = loop
        self.token = token
        self.max_calls = limits["max_calls"]
        self.max_input = limits["max_input_bytes"]
        self.count = 0
        self.waiting = {}
        self.outbox = []
        self.flushing = False
        self.spins = 0

    async def call(self, name, call_input):
        try:
            encoded = json.dumps(call_input, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise TypeError(f"the input of tool '{name}' must be JSON data: {err}") from None
        if len(encoded.encode("utf-8")) > self.max_input:
            raise ValueError(
                f"the input of tool '{name}' is larger than {self.max_input} bytes"
            )
        if self.count >= self.max_calls:
            raise RuntimeError(f"a program may make at most {self.max_calls} tool calls")
        self.count += 1
        call_id = f"call_{self.count:03d}"
        future = self.loop.create_future()
        self.waiting[call_id] = future
        self.outbox.append({"id": call_id, "name": name, "input": json.loads(encoded)})
        if not self.flushing:
            self.flushing = True
            self.spins = 0
            self.loop.call_soon(self.flush)
        try:
            return await future
        finally:
            self.waiting.pop(call_id, None)

    def busy(self):
        # Private attributes of asyncio's base loop; without them, never claim idleness.
        ready = getattr(self.loop, "_ready", None)
        timers = getattr(self.loop, "_scheduled", None)
        if ready is None or timers is None:
            return True
        return bool(ready) or any(not t.cancelled() for t in timers)

    def flush(self):
        ready = getattr(self.loop, "_ready", None)
        if ready and self.spins < BATCH_SPINS:
            # Other tasks can still run: let them make their calls into this batch.
            self.spins += 1
            self.loop.call_soon(self.flush)
            return
        self.flushing = False
        batch, self.outbox = self.outbox, []
        if batch:
            publish({"token": self.token, "calls": batch, "idle": not self.busy()})

    def deliver(self, content):
        if not isinstance(content, dict) or content.get("token") != self.token:
            return
        for result in content.get("results") or []:
            future = self.waiting.get(result.get("id"))
            if future is None or future.done():
                continue
            if result.get("ok"):
                future.set_result(result.get("result"))
            else:
                message = result.get("error") or "Tool execution failed"
                future.set_exception(ToolExecutionError(message))


def publish(payload):
    from IPython.display import publish_display_data

    publish_display_data({MIME: payload}, metadata={})


def make_tool(bridge, tool):
    name, function, params = tool["name"], tool["function"], tool["params"]
    required = tool["required"]

    async def call_tool(*args, **kwargs):
        if args:
            # Positions only map to one parameter without doubt.
            if len(args) == 1 and not kwargs and isinstance(args[0], dict) and not params:
                kwargs = dict(args[0])
            elif len(args) == 1 and (len(params) == 1 or len(required) == 1):
                target = params[0] if len(params) == 1 else required[0]
                if target in kwargs:
                    raise TypeError(f"{function}() got multiple values for '{target}'")
                kwargs[target] = args[0]
            else:
                raise TypeError(
                    f"{function}() takes keyword arguments only, e.g. "
                    f"{function}({', '.join(p + '=...' for p in params) or 'key=value'})"
                )
        call_input = {k: v for k, v in kwargs.items() if v is not None}
        return await bridge.call(name, call_input)

    call_tool.__name__ = call_tool.__qualname__ = function
    call_tool.__doc__ = tool.get("description") or None
    return call_tool


def compile_program(code):
    linecache.cache[PROGRAM] = (len(code), None, code.splitlines(True), PROGRAM)
    flags = getattr(__import__("ast"), "PyCF_ALLOW_TOP_LEVEL_AWAIT", 0)
    try:
        return compile(code, PROGRAM, "exec", flags=flags, dont_inherit=True)
    except SyntaxError as err:
        if "outside function" not in str(err):
            raise
    # A top-level `return` (allowed by the official API's async wrapper): wrap the same way.
    body = "".join(
        ("    " + line if line.strip() else line) for line in code.splitlines(True)
    )
    wrapped = f"async def __program__():\n{body}\n"
    linecache.cache[PROGRAM] = (len(wrapped), None, wrapped.splitlines(True), PROGRAM)
    namespace = {}
    exec(compile(wrapped, PROGRAM, "exec", dont_inherit=True), namespace)
    return namespace["__program__"]


def trimmed(exc):
    """The traceback from the program's first frame on, without this helper's frames."""
    te = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    seen = set()
    stack = [te]
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        frames = list(t.stack)
        first = next((i for i, f in enumerate(frames) if f.filename == PROGRAM), 0)
        kept = [f for f in frames[first:] if f.filename != HELPER]
        t.stack = traceback.StackSummary.from_list(kept)
        stack.extend(x for x in (t.__cause__, t.__context__) if x is not None)
    return "".join(te.format())


def program_namespace(bridge, tools):
    namespace = {
        "__name__": "__main__",
        "__builtins__": builtins,
        "asyncio": asyncio,
        "json": json,
        "os": os,
        "sys": sys,
        "ToolExecutionError": ToolExecutionError,
    }
    for name in ("Any", "Dict", "List", "Optional", "Union"):
        namespace[name] = getattr(typing, name)
    for tool in tools:
        namespace[tool["function"]] = make_tool(bridge, tool)
    return namespace


def run(spec, code):
    spec = json.loads(spec)
    end = {"exit_code": 0}
    loop = asyncio.new_event_loop()
    bridge = Bridge(loop, spec["token"], spec["limits"])
    kernel = get_ipython().kernel  # noqa: F821 (a kernel builtin)

    def on_result(_stream, _idents, message):
        # The control thread: hand the results to the program's loop.
        try:
            loop.call_soon_threadsafe(bridge.deliver, message.get("content"))
        except RuntimeError:
            pass  # the program has ended

    async def program():
        try:
            entry = compile_program(code)
            namespace = program_namespace(bridge, spec["tools"])
            if inspect.iscoroutinefunction(entry):
                entry.__globals__.update(namespace)
                await entry()
            else:
                value = eval(entry, namespace)
                if inspect.isawaitable(value):
                    await value
        except SystemExit as exit:
            status = exit.code
            if status is None or status == 0:
                return
            if not isinstance(status, int):
                print(status, file=sys.stderr)
                status = 1
            end["exit_code"] = status
        except Exception as err:
            sys.stderr.write(trimmed(err))
            end["exit_code"] = 1

    kernel.control_handlers[RESULT_MESSAGE] = on_result
    # The program's time limit runs from here (not from the wait for a kernel).
    publish({"token": bridge.token, "started": True})
    outer = asyncio.events._get_running_loop()
    asyncio.events._set_running_loop(None)
    try:
        loop.run_until_complete(program())
    except KeyboardInterrupt:
        end["interrupted"] = True
    finally:
        kernel.control_handlers.pop(RESULT_MESSAGE, None)
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        except BaseException:
            pass
        loop.close()
        asyncio.events._set_running_loop(outer)
        linecache.cache.pop(PROGRAM, None)
        forget_cell()
    sys.stdout.flush()
    sys.stderr.flush()
    publish({"token": bridge.token, "end": end})


def forget_cell():
    """Keep this cell's text (the helper and the program) out of the kernel's history."""
    try:
        shell = get_ipython()  # noqa: F821
        history = shell.history_manager
        cell = history.input_hist_raw[-1] if history.input_hist_raw else None
        placeholder = "# programmatic tool calling"
        for cells in (history.input_hist_parsed, history.input_hist_raw):
            if cells:
                cells[-1] = placeholder
        for name, value in list(shell.user_ns.items()):
            if name.startswith("_i") and value is cell:
                shell.user_ns[name] = placeholder
    except Exception:
        pass


run(*__ci_args)  # noqa: F821 (set by the server's cell)

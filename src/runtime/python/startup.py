# Run once, silently, in every kernel right after it starts.
#
# Output belongs to the cell that started its writer. ipykernel sends what a background
# thread prints, and what a child process writes to the descriptors 1 and 2, with the
# parent header of whichever cell runs at the time, so a thread or process started by one
# cell would print into the next. Here a thread keeps the parent of the cell that started
# it (a pooled task, of the cell that submitted it), and every cell gets fresh pipes
# behind descriptors 1 and 2, whose output one reader thread sends with that cell's
# parent: a child keeps the pipe of the cell that started it. The server takes output only for the
# running cell, so what an earlier cell's writers send later is dropped.
#
# A figure the cell saved itself (fig.savefig / plt.savefig) is closed at the end of the
# cell, so the inline backend does not display it again: the user asked for a file, and
# returning the same chart twice would be noise. Figures never saved are displayed (and
# the server saves those as figure-<n>.png). The hook is registered before matplotlib's
# own end-of-cell flush, so it runs first.
def __ci_setup():
    import functools
    import importlib.abc
    import importlib.util
    import sys

    def patch(module):
        figure = module.Figure
        if getattr(figure.savefig, "_ci_marks", False):
            return
        original = figure.savefig

        # wraps() keeps the name pyplot checks when it wraps Figure.savefig.
        @functools.wraps(original)
        def savefig(self, *args, **kwargs):
            self._ci_saved = True
            return original(self, *args, **kwargs)

        savefig._ci_marks = True
        figure.savefig = savefig

    class PatchOnImport(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "matplotlib.figure":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            if spec is None or spec.loader is None:
                return spec
            load = spec.loader.exec_module

            def exec_module(module):
                load(module)
                patch(module)

            spec.loader.exec_module = exec_module
            return spec

    if "matplotlib.figure" in sys.modules:
        patch(sys.modules["matplotlib.figure"])
    else:
        sys.meta_path.insert(0, PatchOnImport())

    def close_saved_figures(*_):
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is None:
            return
        for number in list(pyplot.get_fignums()):
            figure = pyplot.figure(number)
            if getattr(figure, "_ci_saved", False):
                pyplot.close(figure)

    get_ipython().events.register("post_execute", close_saved_figures)


def __ci_own_output():
    import codecs
    import concurrent.futures.thread
    import fcntl
    import os
    import select
    import struct
    import sys
    import termios
    import threading
    import time

    streams = [s for s in (sys.stdout, sys.stderr) if hasattr(s, "set_thread_parent")]
    if len(streams) != 2:
        return

    def with_parent(fn, parents):
        def run(*args, **kwargs):
            tokens = [s.set_thread_parent(p) for s, p in parents]
            try:
                return fn(*args, **kwargs)
            finally:
                for s, t in zip(streams, tokens):
                    s.reset_thread_parent(t)

        return run

    def parents():
        return [(s, s.parent_header) for s in streams]

    start = threading.Thread.start

    def start_with_parent(self):
        self.run = with_parent(self.run, parents())
        return start(self)

    threading.Thread.start = start_with_parent

    submit = concurrent.futures.thread.ThreadPoolExecutor.submit

    def submit_with_parent(self, fn, /, *args, **kwargs):
        return submit(self, with_parent(fn, parents()), *args, **kwargs)

    concurrent.futures.thread.ThreadPoolExecutor.submit = submit_with_parent

    class Pipe:
        def __init__(self, fd, stream):
            self.read_end, write_end = os.pipe()
            os.dup2(write_end, fd)
            os.close(write_end)
            self.stream = stream
            self.parent = stream.parent_header
            self.decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode
            self.busy = False
            self.closed = False

        def pending(self):
            if self.closed:
                return False
            try:
                waiting = fcntl.ioctl(self.read_end, termios.FIONREAD, b"\0\0\0\0")
                return struct.unpack("i", waiting)[0] > 0 or self.busy
            except OSError:
                return False

    # One thread reads every cell's pipes (a pipe is read until its last writer has closed
    # it), so a cell starts no thread: a start per cell cost milliseconds of GIL hand-offs.
    poller = select.epoll()
    pipes = {}

    def forward(pipe):
        pipe.busy = True
        try:
            data = os.read(pipe.read_end, 65536)
        except OSError:
            data = b""
        text = pipe.decode(data, final=not data)
        if text:
            token = pipe.stream.set_thread_parent(pipe.parent)
            try:
                pipe.stream.write(text)
            finally:
                pipe.stream.reset_thread_parent(token)
        if not data:
            # Every writer has closed it: the pipe is done.
            pipe.closed = True
            pipes.pop(pipe.read_end, None)
            try:
                poller.unregister(pipe.read_end)
            except (OSError, ValueError):
                pass
            os.close(pipe.read_end)
        pipe.busy = False

    def forward_all():
        while True:
            try:
                ready = poller.poll()
            except InterruptedError:
                continue
            for fd, _ in ready:
                pipe = pipes.get(fd)
                if pipe is not None:
                    try:
                        forward(pipe)
                    except Exception:
                        pipe.busy = False

    current = []

    def fresh_pipes(*_):
        current[:] = [Pipe(fd, s) for fd, s in zip((1, 2), streams)]
        for pipe in current:
            pipes[pipe.read_end] = pipe
            poller.register(pipe.read_end, select.EPOLLIN)

    def drain(*_):
        # What the cell's children wrote before it ended reaches its output.
        deadline = time.monotonic() + 0.5
        while any(p.pending() for p in current) and time.monotonic() < deadline:
            time.sleep(0.002)

    threading.Thread(target=forward_all, daemon=True, name="ci-output").start()
    ip = get_ipython()
    ip.events.register("pre_execute", fresh_pipes)
    ip.events.register("post_execute", drain)


# What a cell sees until a call brings arguments (the server assumes this at start).
__import__("sys").argv = ["main.py"]
__ci_setup()
del __ci_setup
__ci_own_output()
del __ci_own_output

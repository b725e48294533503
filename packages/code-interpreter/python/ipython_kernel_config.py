# Configuration of the code interpreter's Python kernels (passed with --config).
c = get_config()  # noqa: F821

c.InteractiveShellApp.extensions = ["firebreak_ci"]
# Tracebacks and reprs without ANSI colour codes: clients read them as text.
c.InteractiveShell.colors = "NoColor"
# Results show whole collections, as E2B's do.
c.PlainTextFormatter.max_seq_length = 0
# No history database in the home directory (many kernels, no shared file).
c.HistoryManager.enabled = False

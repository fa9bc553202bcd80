"""What `jepa` does besides training: the command line itself, `check` (plan and costs),
`plugins` (listing), `masks` (preview), `eval`, `import-checkpoint` and `export` (interop).

Each command delegates to the kernel and the runtime; `cli` imports torch only once a
command needs it, so `jepa --help` and `jepa plugins` stay fast."""

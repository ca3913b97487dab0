"""The bench (`python -m orchestrator.bench`): one module per section, the goals (`goals`), what the
sections share (`harness`) and the runner that puts them in one report (`runner`)."""

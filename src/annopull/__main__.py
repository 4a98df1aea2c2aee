from annopull.cli import entry

entry()

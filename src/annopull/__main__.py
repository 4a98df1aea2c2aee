from annopull._cli import entry

entry()

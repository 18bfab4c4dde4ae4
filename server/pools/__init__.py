"""The pool of live agents: warm instances, hibernation, admission control."""

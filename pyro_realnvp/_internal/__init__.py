"""Private helpers every layer may import: argument checks, Pyro's and torch's private
names (``compat``), locating a failure in the user's model, and moved-module aliases.
Nothing here imports another part of the package, but for the aliases (``moved``),
which import where a module moved when an old path is used."""

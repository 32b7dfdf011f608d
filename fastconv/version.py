"""fastconv's version: the one place it is written (pyproject.toml reads it for the
package metadata, fastconv.__version__ and `fastconv --version` import it)."""
__version__ = "0.1.0"

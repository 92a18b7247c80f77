"""The tool's version: written into every cache and bundle it makes (one definition; the
package metadata reads it from here)."""

__version__ = "0.1.0"

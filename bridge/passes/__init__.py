"""The bridge's passes: each decides and acts for one concern, per file under the guard."""

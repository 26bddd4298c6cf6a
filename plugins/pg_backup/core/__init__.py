"""Pure models and configuration: no Airflow, no network, no files but the config file.

The lowest layer: every other layer may import it; it imports none of them.
"""

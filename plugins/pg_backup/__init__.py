"""pg_backup: verified PostgreSQL backups as Airflow 3 DAGs."""

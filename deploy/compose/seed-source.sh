#!/usr/bin/env bash
# One-shot step of docker-compose.yaml (service source-seed): the sample voting database on the
# source server, built once and kept on its volume, and the read-only login the backups use.
#
# Environment: PGHOST, PGPORT, PGUSER, PGPASSWORD (a superuser of the source server),
# SOURCE_BACKUP_PASSWORD (the backup login's password), SAMPLE_VOTES, SAMPLE_DB, BACKUP_LOGIN.
# No password is ever put on a command line.
set -euo pipefail

db=${SAMPLE_DB:-voting}
login=${BACKUP_LOGIN:-pgbackup}
: "${SOURCE_BACKUP_PASSWORD:?set SOURCE_BACKUP_PASSWORD (the password of the backup login)}"

exists=$(psql -X -d postgres -Atq -v db="$db" <<'SQL'
SELECT count(*) FROM pg_database WHERE datname = :'db';
SQL
)
if [ "$exists" = 1 ]; then
  echo "sample database $db exists: kept (remove the source-db-data volume to rebuild it)"
else
  python -m pg_backup.sample_db --db "$db" --votes "${SAMPLE_VOTES:-300000}"
fi

# The backup login reads everything and owns nothing (pg_read_all_data, PostgreSQL 14+): the
# same grant README asks of a managed server.
psql -X -v ON_ERROR_STOP=1 -d "$db" -q -v login="$login" <<'SQL'
\getenv password SOURCE_BACKUP_PASSWORD
SET client_min_messages = warning;
SELECT format('CREATE ROLE %I LOGIN', :'login')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'login') \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'login', :'password') \gexec
SELECT format('GRANT pg_read_all_data TO %I', :'login') \gexec
SQL
echo "backup login $login: may read every table of $db, may change nothing"

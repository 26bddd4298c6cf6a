#!/bin/sh
# One-shot step of docker-compose.yaml (service s3-init, image minio/mc): the backup bucket with
# Object Lock, its lifecycle, and two least-privilege users whose policies are the files beside
# this script (README gives the same policies for AWS IAM). Safe to run again.
#
# Environment: MC_HOST_local (admin URL of the s3 service), S3_WRITER_PASSWORD,
# S3_SWEEPER_PASSWORD. Policies are read from the directory of this script.
set -eu

bucket=pg-backups
here=$(dirname "$0")

# --with-lock turns on versioning and Object Lock (MinIO enables Object Lock at creation only).
# Retention is set per object by the writer (storage.object_lock in pg_backup.yaml).
mc mb --ignore-existing --with-lock "local/$bucket"

# Deletes in a versioned bucket only add delete markers: expire the versions they hide, then the
# markers left alone. (MinIO aborts multipart uploads idle for 24 h by itself.)
if ! mc ilm rule ls "local/$bucket" >/dev/null 2>&1; then
  mc ilm rule add --noncurrent-expire-days 30 "local/$bucket"
  mc ilm rule add --expire-delete-marker "local/$bucket"
fi

# Staging of workers that share no disk (profile celery, staging_url): no Object Lock, since a
# run's teardown deletes its staged objects; the lifecycle rule is the backstop for runs whose
# teardown never ran (the sweep removes them after retention.staging_keep_days too).
staging_bucket=pg-backups-staging
mc mb --ignore-existing "local/$staging_bucket"
if ! mc ilm rule ls "local/$staging_bucket" >/dev/null 2>&1; then
  mc ilm rule add --expire-days 7 "local/$staging_bucket"
fi

add_user() {  # add_user <user> <policy> <password>
  mc admin policy create local "$2" "$here/s3-${2#pg-backup-}-policy.json"
  mc admin user add local "$1" "$3"
  mc admin policy attach local "$2" --user "$1" 2>/dev/null || true
  case $(mc admin user info local "$1") in
    *"$2"*) echo "user $1 has policy $2" ;;
    *) echo "user $1 does not have policy $2" >&2; exit 1 ;;
  esac
}
add_user pgbackup-writer pg-backup-writer "${S3_WRITER_PASSWORD:?set S3_WRITER_PASSWORD}"
add_user pgbackup-sweeper pg-backup-sweeper "${S3_SWEEPER_PASSWORD:?set S3_SWEEPER_PASSWORD}"

mc version info "local/$bucket"
echo "bucket $bucket ready: versioning, Object Lock, lifecycle; users pgbackup-writer, pgbackup-sweeper"
echo "bucket $staging_bucket ready: staging of workers that share no disk, expires after 7 days"

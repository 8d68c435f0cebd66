#!/usr/bin/env bash
# Makes sure the tests have a PostgreSQL, and prints its URL (for MUSTER_TEST_POSTGRES_URL).
#
# It installs Debian's `postgresql` when it is missing, starts the newest cluster when it is not
# running (`pg_ctlcluster <version> <name> start`; the package makes `main` when installed), and
# makes the role `muster_test` (password `muster_test`, allowed to CREATE DATABASE). Tests log in
# with that password over TCP on 127.0.0.1, which Debian's pg_hba.conf allows (scram-sha-256), so
# nothing in the cluster's configuration changes. Each test makes a database of its own
# (`muster_test_<random>`) and drops it. Installing, starting and making the role need root.
set -euo pipefail
role=muster_test

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "The tests need PostgreSQL: $1. Run this script as root, or set MUSTER_TEST_POSTGRES_URL." >&2
    exit 1
  fi
}

if ! command -v pg_lsclusters >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  need_root "it is not installed"
  echo "Installing postgresql…" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi

cluster=$(pg_lsclusters --no-header | sort -V | tail -n 1)
if [ -z "$cluster" ]; then
  need_root "it has no cluster"
  version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
  pg_createcluster "$version" main >&2
  cluster=$(pg_lsclusters --no-header | sort -V | tail -n 1)
fi
read -r version name port status _ <<<"$cluster"
case "$status" in
  online*) ;;
  *)
    need_root "its cluster $version/$name is not running"
    echo "Starting PostgreSQL $version/$name…" >&2
    pg_ctlcluster "$version" "$name" start >&2
    ;;
esac

url="postgres://$role:$role@127.0.0.1:$port/postgres"
if [ "$(id -u)" -eq 0 ]; then
  (cd / && runuser -u postgres -- psql -p "$port" -X -q -v ON_ERROR_STOP=1 -c "
    DO \$\$ BEGIN
      IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$role') THEN
        CREATE ROLE $role LOGIN CREATEDB PASSWORD '$role';
      END IF;
    END \$\$;") >&2
fi
if ! psql "$url" -X -q -t -c 'SELECT 1' >/dev/null; then
  echo "Cannot log in to PostgreSQL as $role on 127.0.0.1:$port." >&2
  exit 1
fi
echo "$url"

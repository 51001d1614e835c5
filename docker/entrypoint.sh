#!/bin/sh
# Databox start-up (contract section 9): read /run/secrets, fetch the token secret from the
# arbiter at $DATABOX_ARBITER_ENDPOINT as $DATABOX_LOCAL_NAME, then serve on 5555-5557 with
# CURVE and macaroons, data in /database. Extra arguments go to `jobstore serve`.
set -eu
: "${DATABOX_LOCAL_NAME:?DATABOX_LOCAL_NAME must name this store (the container manager sets it)}"
exec jobstore serve --databox "$@"

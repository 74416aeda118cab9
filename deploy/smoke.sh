#!/usr/bin/env bash
# One command for a user with Docker: bring the whole stack up, wait for every
# healthcheck, run jobs that complete, fail and get cancelled, then prove end to end
# that the telemetry arrived where the dashboards look for it. One PASS/FAIL line per
# check; the exit status is the number of failed checks (0: all passed).
#
#   deploy/smoke.sh                 # from the repository root; leaves the stack running
#   SMOKE_DOWN=1 deploy/smoke.sh    # and removes it (with its volumes) afterwards
#
# Needs: docker compose v2, curl, python3. Reaches the api, Prometheus and Grafana on
# their published 127.0.0.1 ports; Tempo and Loki are not published, so their HTTP APIs
# are queried from inside the compose network (the telemetry-health container's wget).
# tests/test_stack_static.py keeps the service names, ports and panel titles used here in
# step with docker-compose.yml and the dashboards.
# shellcheck disable=SC2329  # the check functions are called through `retry`
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

# Everything this script knows about the stack (checked against docker-compose.yml).
SERVICES="postgres migrate api worker loadgen otel-collector telemetry-health tempo loki prometheus grafana"
PROBE_SERVICE=telemetry-health
API_PORT=8000
PROMETHEUS_PORT=9090
GRAFANA_PORT=3000
TEMPO_URL=http://tempo:3200
LOKI_URL=http://loki:3100
API="http://127.0.0.1:${API_PORT}"
PROMETHEUS="http://127.0.0.1:${PROMETHEUS_PORT}"
GRAFANA="http://127.0.0.1:${GRAFANA_PORT}"
TOKEN="${ORCHESTRATOR_API_TOKEN:-compose-dev-token-not-a-secret}"
GRAFANA_AUTH="admin:${GRAFANA_ADMIN_PASSWORD:-admin}"
DASHBOARDS="orchestrator-operations orchestrator-job"
DATASOURCES="prometheus tempo loki"
# The panels answering the four operational questions (grafana/generate_dashboards.py).
QUESTION_PANELS=(
  "Failures by phase (most-failing first)"
  "Overruns per module (most first)"
  "Transition/persistence errors vs module logic"
  "Time in each phase over the range"
)
SAMPLES=/samples   # where the load generator writes its sample projects (LOADGEN_SAMPLES)
DEADLINE_SECONDS="${SMOKE_DEADLINE_SECONDS:-300}"

failures=0
pass() { printf 'PASS  %s\n' "$1"; }
fail() { printf 'FAIL  %s: %s\n' "$1" "$2"; failures=$((failures + 1)); }

# Retries "$@" until it succeeds or $1 seconds pass; prints the last output.
retry() {
  local seconds=$1; shift
  local until=$((SECONDS + seconds)) out
  while :; do
    if out=$("$@" 2>&1); then printf '%s' "$out"; return 0; fi
    if ((SECONDS >= until)); then printf '%s' "$out"; return 1; fi
    sleep 3
  done
}

json() {  # json '<python expression over d>' < document
  python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"
}

api() {  # api METHOD PATH [JSON body]
  curl -fsS -X "$1" -H "Authorization: Bearer ${TOKEN}" -H 'content-type: application/json' \
    ${3:+--data "$3"} "${API}$2"
}

inside() {  # inside URL: GET from inside the compose network
  docker compose exec -T "$PROBE_SERVICE" wget -q -O - "$1"
}

urlencode() { python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"; }

# -- 1. up, and every healthcheck -----------------------------------------------------

if docker compose up --build -d >/dev/null 2>&1; then pass "docker compose up"; else
  fail "docker compose up" "$(docker compose up --build -d 2>&1 | tail -n 3)"; exit "$failures"
fi

service_ready() {  # healthy, or running without a healthcheck, or (migrate) exited 0
  docker compose ps --all --format json "$1" | python3 -c '
import json, sys
rows = [json.loads(line) for line in sys.stdin if line.strip()]
rows = rows[0] if rows and isinstance(rows[0], list) else rows
ok = rows and all(
    (r["State"] == "running" and r.get("Health", "") in ("", "healthy"))
    or (r["State"] == "exited" and r.get("ExitCode") == 0 and r["Service"] == "migrate")
    for r in rows)
sys.exit(0 if ok else 1)'
}
for service in $SERVICES; do
  if retry "$DEADLINE_SECONDS" service_ready "$service" >/dev/null; then pass "service $service healthy"
  else fail "service $service healthy" "$(docker compose ps --all "$service" | tail -n +2)"; fi
done

# -- 2. jobs that complete, fail and get cancelled ------------------------------------

declare -A JOB EXPECTED=(
  [clean-service]=completed [large-monorepo]=completed [broken-manifest]=failed [nightly-batch]=cancelled)
for project in "${!EXPECTED[@]}"; do
  JOB[$project]=$(api POST /v1/jobs "{\"project_id\": \"smoke-${project}\", \"source\": \"${SAMPLES}/${project}\"}" \
    | json 'd["id"]') || fail "create job ${project}" "the API refused it"
done
status_of() { api GET "/v1/jobs/$1" | json 'd["status"]'; }
running() { [[ $(status_of "$1") == running ]]; }
terminal() { api GET "/v1/jobs/$1" | json 'd["status"] if d["status"] in ("completed", "failed", "cancelled") else sys.exit(1)'; }
if [[ -n "${JOB[nightly-batch]:-}" ]]; then
  # Cancel it while it runs (a queued job is cancelled at once, which proves less).
  retry 30 running "${JOB[nightly-batch]}" >/dev/null
  api POST "/v1/jobs/${JOB[nightly-batch]}/cancel?reason=smoke+test" >/dev/null
fi
declare -A TRACE
for project in "${!EXPECTED[@]}"; do
  [[ -n "${JOB[$project]:-}" ]] || continue
  status=$(retry 120 terminal "${JOB[$project]}")
  TRACE[$project]=$(api GET "/v1/jobs/${JOB[$project]}" | json 'd["trace_id"]')
  if [[ "$status" == "${EXPECTED[$project]}" ]]; then pass "job ${project} ${status}"
  else fail "job ${project} ${EXPECTED[$project]}" "ended ${status:-in no terminal status} (${JOB[$project]})"; fi
done

# -- 3. traces in Tempo, logs in Loki (by trace id) -----------------------------------

since=$(($(date +%s) - 3600))
for project in "${!TRACE[@]}"; do
  trace=${TRACE[$project]}
  if retry 180 inside "${TEMPO_URL}/api/v2/traces/${trace}" >/dev/null; then pass "trace of ${project} in Tempo"
  else fail "trace of ${project} in Tempo" "GET ${TEMPO_URL}/api/v2/traces/${trace} found nothing"; fi
  query=$(urlencode "{service_name=\"orchestrator\"} | trace_id=\"${trace}\"")
  has_logs() { inside "${LOKI_URL}/loki/api/v1/query_range?query=${query}&start=${since}000000000&limit=5" \
    | json 'd["data"]["result"][0]["values"][0]'; }
  if retry 180 has_logs >/dev/null; then pass "logs of ${project} in Loki by trace_id"
  else fail "logs of ${project} in Loki by trace_id" "no log record with trace_id=${trace}"; fi
done

# -- 4. metrics: each of the four questions' panels returns data ----------------------

panel_queries() {  # the PromQL of a panel of the operations dashboard, Grafana variables filled in
  python3 - "$1" <<'PY'
import json, sys
board = json.load(open("grafana/dashboards/orchestrator-operations.json", encoding="utf-8"))
def panels(items):
    for p in items:
        yield p
        yield from panels(p.get("panels", []))
(panel,) = [p for p in panels(board["panels"]) if p.get("title") == sys.argv[1]]
for target in panel["targets"]:
    expr = target["expr"].replace("$__range", "1h").replace("$__rate_interval", "1m")
    print(expr.replace("\n", " "))
PY
}
for title in "${QUESTION_PANELS[@]}"; do
  ok=1
  while IFS= read -r expr; do
    has_data() { curl -fsS --get --data-urlencode "query=${expr}" "${PROMETHEUS}/api/v1/query" \
      | json 'd["data"]["result"][0]'; }
    retry 120 has_data >/dev/null || { ok=0; fail "panel \"${title}\" has data" "${expr}"; }
  done < <(panel_queries "$title")
  ((ok)) && pass "panel \"${title}\" has data"
done

# -- 5. Grafana: both dashboards, every data source healthy ---------------------------

for uid in $DASHBOARDS; do
  if curl -fsS "${GRAFANA}/api/dashboards/uid/${uid}" >/dev/null; then pass "Grafana serves dashboard ${uid}"
  else fail "Grafana serves dashboard ${uid}" "GET /api/dashboards/uid/${uid} failed"; fi
done
for uid in $DATASOURCES; do
  health=$(curl -fsS -u "$GRAFANA_AUTH" "${GRAFANA}/api/datasources/uid/${uid}/health" | json 'd["status"]')
  if [[ "$health" == OK ]]; then pass "Grafana data source ${uid} healthy"
  else fail "Grafana data source ${uid} healthy" "status ${health:-unknown}"; fi
done

# -- 6. alert rules evaluate ----------------------------------------------------------

rules_evaluated() {
  curl -fsS "${PROMETHEUS}/api/v1/rules" | json '
[r for g in d["data"]["groups"] for r in g["rules"] if r["type"] == "alerting" and r["health"] == "ok"
 and not r["lastEvaluation"].startswith("0001")][0]["name"]'
}
if rule=$(retry 120 rules_evaluated); then pass "alert rule ${rule} evaluates"
else fail "alert rules evaluate" "no alerting rule with health ok has been evaluated"; fi
broken=$(curl -fsS "${PROMETHEUS}/api/v1/rules" | json '
", ".join(r["name"] for g in d["data"]["groups"] for r in g["rules"] if r["health"] == "err")')
if [[ -z "$broken" ]]; then pass "no rule in error"; else fail "no rule in error" "$broken"; fi

# -----------------------------------------------------------------------------------

if [[ "${SMOKE_DOWN:-0}" == 1 ]]; then docker compose down -v >/dev/null 2>&1; fi
echo "$failures failed"
exit "$failures"

# Demo backend 2, registered with the dev agent at start. Consul probes it over the compose
# network; lb receives it from /v1/health/service/demo?passing once the check passes.
service {
  name    = "demo"
  id      = "demo-2"
  address = "demo-2"
  port    = 5678
  tags    = ["v1"]
  meta    = { backend = "demo-2" }
  # Consul's per-instance weight, which lb honours: demo-1 gets three requests for each of demo-2's.
  weights = { passing = 1, warning = 1 }
  check {
    id       = "demo-2-http"
    name     = "demo-2 HTTP"
    http     = "http://demo-2:5678/"
    interval = "5s"
    timeout  = "2s"
  }
}

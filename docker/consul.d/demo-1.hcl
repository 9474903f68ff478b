# Demo backend 1, registered with the dev agent at start. Consul probes it over the compose
# network; lb receives it from /v1/health/service/demo?passing once the check passes.
service {
  name    = "demo"
  id      = "demo-1"
  address = "demo-1"
  port    = 5678
  tags    = ["v1"]
  meta    = { backend = "demo-1" }
  # Consul's per-instance weight, which lb honours: demo-1 gets three requests for each of demo-2's.
  weights = { passing = 3, warning = 1 }
  check {
    id       = "demo-1-http"
    name     = "demo-1 HTTP"
    http     = "http://demo-1:5678/"
    interval = "5s"
    timeout  = "2s"
  }
}

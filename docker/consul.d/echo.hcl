# A service whose route is declared by its tags alone (consul.auto in lb.yaml):
# lb routes /echo/* to it, without the /echo prefix.
service {
  name    = "echo"
  id      = "echo-1"
  address = "echo"
  port    = 5678
  tags    = ["lb.enable=true", "lb.path=/echo", "lb.strip_prefix=true"]
  check {
    id       = "echo-1-http"
    name     = "echo-1 HTTP"
    http     = "http://echo:5678/"
    interval = "5s"
    timeout  = "2s"
  }
}

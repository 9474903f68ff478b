"""Route matching and order, compiled tables, and each action through the proxy."""

import asyncio
import collections
import textwrap

from conftest import Client, backends, free_port, lb_yaml, ok_response, running_lb

from lb.config import model
from lb.config.schema import Builder
from lb.routing.table import RouteTable


def table(yaml_routes: str) -> RouteTable:
    import yaml

    node = yaml.compose(textwrap.dedent(yaml_routes))
    b = Builder({})
    routes = b.build(list[model.Route], node, "routes")
    assert not b.problems, b.problems
    return RouteTable(routes)


def name(t: RouteTable, host="x", path="/", method=b"GET", query="", headers=()):
    r = t.lookup(host, method, path, query, list(headers))
    return r.name if r else None


def test_specificity_order():
    t = table("""
    - {name: any, service: s}
    - {name: prefix-short, match: {path: {prefix: /a}}, service: s}
    - {name: prefix-long, match: {path: {prefix: /a/b}}, service: s}
    - {name: exact, match: {path: {exact: /a/b/c}}, service: s}
    - {name: regex, match: {path: {regex: "^/r[0-9]+$"}}, service: s}
    - {name: wild, match: {host: "*.example.com"}, service: s}
    - {name: host, match: {host: api.example.com}, service: s}
    - {name: host-path, match: {host: api.example.com, path: {prefix: /v1}}, service: s}
    """)
    assert name(t, path="/a/b/c") == "exact"
    assert name(t, path="/a/b/d") == "prefix-long"
    assert name(t, path="/a/x") == "prefix-short"
    assert name(t, path="/r12") == "regex"
    assert name(t, path="/zzz") == "any"
    assert name(t, host="www.example.com") == "wild"
    assert name(t, host="deep.www.example.com") == "wild"
    assert name(t, host="example.com") == "any"
    assert name(t, host="api.example.com") == "host"
    assert name(t, host="api.example.com", path="/v1/users") == "host-path"


def test_explicit_priority_wins():
    t = table("""
    - {name: exact, match: {path: {exact: /a}}, service: s}
    - {name: catchall, priority: 100, service: s}
    """)
    assert name(t, path="/a") == "catchall"
    assert t.shadowed()[0].message == 'can never match: route "catchall" always matches first'


def test_methods_headers_query():
    t = table("""
    - name: post-only
      match: {path: {prefix: /}, methods: [post, PUT]}
      service: s
    - name: beta
      match: {headers: [{name: X-Beta, exact: "1"}]}
      service: s
    - name: mobile
      match: {headers: [{name: User-Agent, regex: "iPhone|Android"}]}
      service: s
    - name: no-auth
      match: {headers: [{name: Authorization, present: false}], path: {prefix: /private}}
      service: s
    - name: query
      match: {query: [{name: v, exact: "2"}]}
      service: s
    - {name: rest, service: s}
    """)
    assert name(t, method=b"POST") == "post-only"
    assert name(t, headers=[(b"x-beta", b"1")]) == "beta"
    assert name(t, headers=[(b"User-Agent", b"Mozilla iPhone")]) == "mobile"
    assert name(t, path="/private/x") == "no-auth"
    assert name(t, path="/private/x", headers=[(b"Authorization", b"t")]) == "rest"
    assert name(t, query="a=1&v=2") == "query"
    assert name(t, query="v=3") == "rest"


def test_prefix_groups_match_like_the_plain_scan():
    routes = "\n".join(
        f"- {{name: r{i}, match: {{host: h{i % 7}.test, path: {{prefix: "
        f"/p{i % 13}/{'x' * (i % 3)}}}}}, service: s}}"
        for i in range(300)
    )
    t = table(routes)
    for i in range(300):
        host, path = f"h{i % 7}.test", f"/p{i % 13}/{'x' * (i % 3)}/tail"
        scanned = next((r.name for r in t.routes if r.hosts == (host,) and r.path_ok(path)), None)
        assert name(t, host=host, path=path) == scanned


def test_large_table_lookup_is_flat():
    routes = "\n".join(
        f"- {{name: r{i}, match: {{host: h{i}.test, path: {{prefix: /api/{i}}}}}, service: s}}"
        for i in range(2000)
    )
    t = table(routes)
    assert name(t, host="h1999.test", path="/api/1999/x") == "r1999"
    assert name(t, host="h1999.test", path="/nope") is None


async def test_actions_through_proxy(tmp_path):
    echo = lambda r: ok_response(  # noqa: E731
        f"{r.method} {r.path} {r.header('x-added')} {r.header('x-gone')}".encode(),
        headers="x-internal: secret\r\n",
    )
    async with backends(2, respond=echo) as bes:
        routes = textwrap.dedent("""\
        routes:
          - name: strip
            match: {path: {prefix: /api}}
            service: app
            rewrite: {strip_prefix: /api, add_prefix: /v2}
            request_headers: {set: {X-Added: yes-set}, remove: [X-Gone]}
            response_headers: {remove: [X-Internal], add: {X-Served-By: lb}}
          - name: regex
            match: {path: {prefix: /user}}
            service: app
            rewrite: {regex: {pattern: "^/user/([0-9]+)$", replacement: "/users?id=\\\\1"}}
          - name: moved
            match: {path: {prefix: /old}}
            redirect: {host: new.example.com, path: /new, status: 301}
          - name: https
            match: {path: {prefix: /secure}}
            redirect: {scheme: https, port: 8443, status: 308}
          - name: maintenance
            match: {host: down.example.com}
            respond: {status: 503, body: "back soon\\n", headers: {Retry-After: "120"}}
          - name: json
            match: {path: {exact: /status.json}}
            respond: {body: '{"ok":true}', headers: {Content-Type: application/json}}
          - name: canary
            match: {path: {prefix: /canary}}
            split: [{service: app, weight: 95}, {service: beta, weight: 5}]
          - name: sticky
            match: {path: {prefix: /sticky}}
            split: [{service: app, weight: 50}, {service: beta, weight: 50}]
            sticky: {cookie: session}
        """)
        extra_service = f'  beta:\n    backends: ["{bes[1].address}"]\n'
        cfg = lb_yaml(
            [bes[0].address], port=free_port(), admin_port=free_port(), routes=routes
        ).replace("routes:", extra_service + "routes:", 1)
        async with running_lb(tmp_path, cfg) as lb:
            c = await Client.connect(lb.port)
            r = await c.request(path="/api/items?q=1", headers="x-gone: 1\r\n")
            assert r.body == b"GET /v2/items?q=1 yes-set None"
            assert r.header("x-internal") is None and r.header("x-served-by") == "lb"
            assert (await c.request(path="/user/42")).body.startswith(b"GET /users?id=42")
            r = await c.request(path="/old/page?x=1", host="www.example.com")
            assert r.status == 301 and r.header("location") == "http://new.example.com/new"
            r = await c.request(path="/secure/a?b=c", host="shop.example.com:8080")
            assert r.status == 308
            assert r.header("location") == "https://shop.example.com:8443/secure/a?b=c"
            r = await c.request(host="down.example.com")
            assert (r.status, r.body, r.header("retry-after")) == (503, b"back soon\n", "120")
            assert r.raw_head.lower().count(b"content-type:") == 1
            r = await c.request(path="/status.json")
            types = [v for n, v in r.headers if n.lower() == "content-type"]
            assert (r.body, types) == (b'{"ok":true}', ["application/json"])  # the route's only
            seen = collections.Counter()
            for _ in range(200):
                before = len(bes[1].seen)
                await c.request(path="/canary")
                seen["beta" if len(bes[1].seen) > before else "app"] += 1
            assert seen == {"app": 190, "beta": 10}
            firsts = set()
            for i in range(20):
                before = len(bes[1].seen)
                for _ in range(3):
                    await c.request(path="/sticky", headers=f"cookie: a=1; session=user{i}\r\n")
                firsts.add(len(bes[1].seen) - before)
            assert firsts <= {0, 3} and firsts == {0, 3}  # each user sticks to one side
            c.close()


async def test_per_route_timeout_and_body_limit_override_listener(tmp_path):
    async def slow(req):
        await asyncio.sleep(0.5 if req.path.startswith("/slow") else 0)
        return ok_response(b"ok")

    routes = textwrap.dedent("""\
    routes:
      - name: slow
        match: {path: {prefix: /slow}}
        service: app
        timeouts: {response_head: 100ms}
      - name: upload
        match: {path: {prefix: /upload}}
        service: app
        max_body_size: 10MiB
      - {name: rest, service: app}
    """)
    listener = "    limits: {max_body_size: 1KiB}\n"
    async with (
        backends(1, respond=slow) as bes,
        running_lb(
            tmp_path,
            lb_yaml(
                [bes[0].address],
                port=free_port(),
                admin_port=free_port(),
                routes=routes,
                extra_listener=listener,
            ),
        ) as lb,
    ):
        c = await Client.connect(lb.port)
        assert (await c.request(path="/slow")).status == 504
        c.close()
        c = await Client.connect(lb.port)
        assert (await c.request("POST", path="/upload", body=b"x" * 5000)).status == 200
        assert (await c.request("POST", path="/other", body=b"x" * 5000)).status == 413
        c.close()

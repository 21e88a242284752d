# Edge cache in front of streamcore (docs/EDGE.md). Varnish 7 with varnish-modules (xkey) and
# varnish-vmod-digest (HMAC), both Debian packages.
#
# Finance reads are cached per (URL, org), and the org comes only from a bearer token whose
# HS256 signature and expiry this VCL has checked with the app's own secret. Anything it cannot
# verify goes to the app, which answers it (401, 404, ...) and is never cached in its place.
# Writes purge by tag (PURGE with an `xkey` header) from the app, after commit.
#
# A deployer changes two lines: the backend's port (or host) and the path of the JWT secret,
# the same bytes as the app's JWT_SECRET or DATA_DIR/jwt_secret.
vcl 4.1;

import std;
import xkey;
import digest;

backend default {
    .host = "127.0.0.1";
    .port = "4000";
    .connect_timeout = 1s;
    .first_byte_timeout = 30s;
}

# Who may purge: the app's hosts.
acl purgers {
    "127.0.0.1";
    "::1";
}

sub streamcore_secret {
    # std.fileread reads the file once per VCL load; reload the VCL after rotating the secret.
    set req.http.X-Edge-Secret-Path = "/etc/varnish/streamcore_jwt_secret";
}

sub vcl_recv {
    # Set only by this VCL, from a verified token: never trust one that arrives.
    unset req.http.X-Edge-Org;
    unset req.http.X-Edge-Claims;
    unset req.http.X-Edge-Secret-Path;

    if (req.method == "PURGE") {
        if (client.ip !~ purgers) {
            return (synth(403, "Forbidden"));
        }
        if (!req.http.xkey) {
            return (synth(400, "A PURGE needs an xkey header naming the tags"));
        }
        set req.http.X-Edge-Purged = xkey.purge(req.http.xkey);
        return (synth(200, "Purged"));
    }
    if (req.http.Upgrade ~ "(?i)websocket") {
        return (pipe);  # the realtime stream, straight to the app
    }
    if ((req.method != "GET" && req.method != "HEAD") || req.url !~ "^/v1/finance/") {
        return (pass);
    }
    call streamcore_verify_token;
    if (!req.http.X-Edge-Org) {
        return (pass);  # the app checks the token and answers; nothing is cached for it
    }
    set req.url = std.querysort(req.url);
    return (hash);
}

# Sets X-Edge-Org from a token signed with the app's secret and not yet expired; else leaves it
# unset. The claims are only read once the signature over them has been checked.
sub streamcore_verify_token {
    call streamcore_secret;
    if (req.http.Authorization !~ "^Bearer [A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$") {
        unset req.http.X-Edge-Secret-Path;
        return;
    }
    # A short or missing secret would let anyone sign: then nothing is cached at all.
    if (regsub(std.fileread(req.http.X-Edge-Secret-Path), "\s+$", "") !~ "^.{32,}$") {
        std.log("streamcore: the JWT secret file is missing or shorter than 32 bytes");
        unset req.http.X-Edge-Secret-Path;
        return;
    }
    # Compared as HMACs of the two signatures, so the time a mismatch takes tells nothing.
    if (digest.hmac_sha256(
            regsub(std.fileread(req.http.X-Edge-Secret-Path), "\s+$", ""),
            digest.base64url_nopad_hex(digest.hmac_sha256(
                regsub(std.fileread(req.http.X-Edge-Secret-Path), "\s+$", ""),
                regsub(req.http.Authorization, "^Bearer ([^.]+\.[^.]+)\..*$", "\1"))))
        != digest.hmac_sha256(
            regsub(std.fileread(req.http.X-Edge-Secret-Path), "\s+$", ""),
            regsub(req.http.Authorization, "^Bearer [^.]+\.[^.]+\.(.*)$", "\1"))) {
        unset req.http.X-Edge-Secret-Path;
        return;
    }
    unset req.http.X-Edge-Secret-Path;
    set req.http.X-Edge-Claims = digest.base64url_nopad_decode(
        regsub(req.http.Authorization, "^Bearer [^.]+\.([^.]+)\..*$", "\1"));
    if (req.http.X-Edge-Claims ~ {"[{,]"iss":"streamcore"[,}]"}
        && req.http.X-Edge-Claims ~ {"[{,]"exp":[0-9]{1,12}[,}]"}
        && req.http.X-Edge-Claims ~ {"[{,]"org":[0-9]{1,19}[,}]"}
        && std.integer(regsub(req.http.X-Edge-Claims, {"^.*[{,]"exp":([0-9]+)[,}].*$"}, "\1"), 0)
            > std.integer(time=now)) {
        set req.http.X-Edge-Org = regsub(
            req.http.X-Edge-Claims, {"^.*[{,]"org":([0-9]+)[,}].*$"}, "\1");
    }
    unset req.http.X-Edge-Claims;
}

sub vcl_pipe {
    if (req.http.Upgrade) {
        set bereq.http.Upgrade = req.http.Upgrade;
        set bereq.http.Connection = req.http.Connection;
    }
}

sub vcl_hash {
    hash_data(req.url);
    if (req.http.host) {
        hash_data(req.http.host);
    } else {
        hash_data(server.ip);
    }
    # The verified org is part of every key: org B's request can never find org A's object.
    hash_data("org=" + req.http.X-Edge-Org);
    # CORS headers follow Origin (the app's Vary: Origin, replaced by the key as below).
    hash_data("origin=" + req.http.Origin);
    return (lookup);
}

sub vcl_backend_fetch {
    unset bereq.http.X-Edge-Org;  # the app checks the token itself on every request it sees
}

sub vcl_backend_response {
    if (bereq.uncacheable) {
        return (deliver);
    }
    # Only what the app marks for the edge, and only a 200, is kept; everything else is a
    # hit-for-miss, so the next request asks the app again.
    if (beresp.status != 200 || beresp.http.Surrogate-Control !~ "max-age=[0-9]+"
        || beresp.http.Set-Cookie) {
        set beresp.uncacheable = true;
        set beresp.ttl = 10s;
        return (deliver);
    }
    set beresp.ttl = std.duration(
        regsub(beresp.http.Surrogate-Control, "^.*max-age=([0-9]+).*$", "\1s"), 0s);
    set beresp.grace = 0s;
    if (beresp.http.Surrogate-Control ~ "stale-while-revalidate=[0-9]+") {
        set beresp.grace = std.duration(regsub(beresp.http.Surrogate-Control,
            "^.*stale-while-revalidate=([0-9]+).*$", "\1s"), 0s);
    }
    # Past ttl + grace the object is kept to revalidate: the app answers 304 from its ETag.
    set beresp.keep = 1h;
    # Tags for xkey: the app names them in xkey, Surrogate-Key or Cache-Tag by EDGE_PROVIDER.
    if (!beresp.http.xkey && beresp.http.Surrogate-Key) {
        set beresp.http.xkey = beresp.http.Surrogate-Key;
    }
    if (!beresp.http.xkey && beresp.http.Cache-Tag) {
        set beresp.http.xkey = beresp.http.Cache-Tag;
    }
    # The org and Origin are already in the key; varying on the token too would keep one copy
    # per token. The header itself goes back to clients in vcl_deliver.
    if (beresp.http.Vary) {
        set beresp.http.X-Edge-Vary = beresp.http.Vary;
        unset beresp.http.Vary;
    }
    return (deliver);
}

sub vcl_deliver {
    if (resp.http.X-Edge-Vary) {
        set resp.http.Vary = resp.http.X-Edge-Vary;
        unset resp.http.X-Edge-Vary;
    }
    # Tags and the edge's own lifetime are for this cache only.
    unset resp.http.xkey;
    unset resp.http.Surrogate-Key;
    unset resp.http.Cache-Tag;
    unset resp.http.Surrogate-Control;
    if (req.http.X-Edge-Org) {
        set resp.http.X-Edge-Cache = "miss";
        if (obj.hits > 0) {
            set resp.http.X-Edge-Cache = "hit";
        }
    } else {
        set resp.http.X-Edge-Cache = "pass";
    }
}

sub vcl_synth {
    if (req.method == "PURGE") {
        set resp.http.Content-Type = "application/json";
        if (resp.status == 200) {
            set resp.body = {"{"purged":"} + req.http.X-Edge-Purged + "}";
        } else {
            set resp.body = {"{"error":{"code":"purge_refused","message":""} + resp.reason
                + {"","details":{}}}"};
        }
        return (deliver);
    }
}

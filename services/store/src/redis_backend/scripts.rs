//! The Lua scripts of the Redis backend. Every multi-key update runs in one script, so it is
//! atomic; `KEYS[1]` is always the base of a key family (see [`super::keys`]) whose hash tag all
//! keys the script touches share, which routes the script to the right cluster node and keeps
//! it inside one slot.
//!
//! Time comes from the Redis server (`TIME`), so replicas with skewed clocks agree on expiry.
//! Numbers are formatted with `%.0f` before being passed back to Redis (Lua would print large
//! numbers in exponent form).

use std::sync::LazyLock;

use redis::Script;

/// Helpers shared by the application scripts. `KEYS[1]` = `P:{app:A}`.
const APP_PRELUDE: &str = r#"
local base = KEYS[1]
local presence = base .. ':presence'
local peers = base .. ':peers'
local updated = base .. ':updated'
local function num(n) return string.format('%.0f', n) end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function rec_key(p) return base .. ':peer:' .. p end
local function attrs_key(p) return base .. ':attrs:' .. p end
local function idx_key(k) return base .. ':idx:' .. k end
local function member(v, p) return v .. '\0' .. p end
-- live iff the presence deadline is not past (Redis expires a key when now > its expiry)
local function live(p, now)
  local s = redis.call('ZSCORE', presence, p)
  return s and tonumber(s) >= now
end
-- remove a peer and everything it published
local function purge(p)
  local akey = attrs_key(p)
  local attrs = redis.call('HGETALL', akey)
  for i = 1, #attrs, 2 do
    redis.call('ZREM', idx_key(attrs[i]), member(attrs[i + 1], p))
  end
  redis.call('DEL', akey, rec_key(p))
  redis.call('HDEL', updated, p)
  redis.call('ZREM', presence, p)
  redis.call('ZREM', peers, p)
end
-- the published record of a live peer, flat: updated ms ('0' = never), then key, value, ...
local function published(p)
  local out = {redis.call('HGET', updated, p) or '0'}
  local attrs = redis.call('HGETALL', attrs_key(p))
  for i = 1, #attrs do out[i + 1] = attrs[i] end
  return out
end
local function sweep(now, max)
  if max <= 0 then return 0 end
  local dead = redis.call('ZRANGEBYSCORE', presence, '-inf', '(' .. num(now), 'LIMIT', 0, max)
  for _, p in ipairs(dead) do purge(p) end
  return #dead
end
"#;

fn app_script(body: &str) -> Script {
    Script::new(&format!("{APP_PRELUDE}\n{body}"))
}

/// ARGV: peer, record JSON, ttl ms, sweep batch. An expired incarnation is purged first; a
/// live one keeps its attributes.
pub(crate) static PUT_PEER: LazyLock<Script> = LazyLock::new(|| {
    app_script(
        r#"
local p = ARGV[1]
local now = now_ms()
sweep(now, tonumber(ARGV[4]))
if redis.call('ZSCORE', presence, p) and not live(p, now) then purge(p) end
local deadline = now + tonumber(ARGV[3])
redis.call('ZADD', presence, num(deadline), p)
redis.call('ZADD', peers, 0, p)
redis.call('SET', rec_key(p), ARGV[2], 'PXAT', num(deadline))
return 1
"#,
    )
});

/// ARGV: peer, ttl ms, sweep batch. Returns 1 when the peer was live and is refreshed.
pub(crate) static TOUCH_PEER: LazyLock<Script> = LazyLock::new(|| {
    app_script(
        r#"
local p = ARGV[1]
local now = now_ms()
sweep(now, tonumber(ARGV[3]))
local s = redis.call('ZSCORE', presence, p)
if not s then return 0 end
if tonumber(s) < now then purge(p) return 0 end
local deadline = now + tonumber(ARGV[2])
redis.call('ZADD', presence, 'XX', num(deadline), p)
redis.call('PEXPIREAT', rec_key(p), num(deadline))
return 1
"#,
    )
});

/// ARGV: peer. Returns 1 when the peer was live.
pub(crate) static REMOVE_PEER: LazyLock<Script> = LazyLock::new(|| {
    app_script(
        r#"
local p = ARGV[1]
local was_live = live(p, now_ms())
purge(p)
if was_live then return 1 end
return 0
"#,
    )
});

/// ARGV: after ('' = from the start), limit, scan budget, purge budget.
/// Returns {next ('' = none), record JSON...}.
pub(crate) static LIST_PEERS: LazyLock<Script> = LazyLock::new(|| {
    app_script(
        r#"
local now = now_ms()
local limit = tonumber(ARGV[2])
local budget = tonumber(ARGV[3])
local purge_left = tonumber(ARGV[4])
local min = '-'
if ARGV[1] ~= '' then min = '(' .. ARGV[1] end
local out = {''}
local found = 0
local scanned = 0
local last = nil
local done = false
while not done and found < limit and scanned < budget do
  local want = math.min(limit - found + 16, budget - scanned)
  local batch = redis.call('ZRANGEBYLEX', peers, min, '+', 'LIMIT', 0, want)
  local i = 0
  for _, p in ipairs(batch) do
    i = i + 1
    scanned = scanned + 1
    last = p
    if live(p, now) then
      local rec = redis.call('GET', rec_key(p))
      if rec then
        found = found + 1
        out[found + 1] = rec
      end
    elseif purge_left > 0 then
      purge(p)
      purge_left = purge_left - 1
    end
    if found >= limit then break end
  end
  if i == #batch and #batch < want then done = true end
  if last then min = '(' .. last end
end
if not done and last then
  local more = redis.call('ZRANGEBYLEX', peers, '(' .. last, '+', 'LIMIT', 0, 1)
  if #more > 0 then out[1] = last end
end
return out
"#,
    )
});

/// ARGV: (none). Returns the number of live peers.
pub(crate) static COUNT_PEERS: LazyLock<Script> = LazyLock::new(|| {
    app_script(
        r#"
return redis.call('ZCOUNT', presence, num(now_ms()), '+inf')
"#,
    )
});

/// ARGV: max. Returns the number of expired peers purged.
pub(crate) static SWEEP: LazyLock<Script> = LazyLock::new(|| {
    app_script(
        r#"
return sweep(now_ms(), tonumber(ARGV[1]))
"#,
    )
});

/// ARGV: peer, mode ('r' replace | 'm' merge), sweep batch, max attributes ('0' = no cap),
/// key1, value1, ... Returns {'offline'} when the peer is not online, {'toomany', n} (nothing
/// changed) when it would hold n > max attributes, else {'ok', updated ms, key, value, ...}: the
/// record after the change.
pub(crate) static PUBLISH_ATTRIBUTES: LazyLock<Script> = LazyLock::new(|| {
    app_script(
        r#"
local p = ARGV[1]
local now = now_ms()
sweep(now, tonumber(ARGV[3]))
if not live(p, now) then
  if redis.call('ZSCORE', presence, p) then purge(p) end
  return {'offline'}
end
local akey = attrs_key(p)
local cap = tonumber(ARGV[4])
if cap > 0 then
  local n = 0
  if ARGV[2] == 'r' then
    n = (#ARGV - 4) / 2
  else
    n = redis.call('HLEN', akey)
    for i = 5, #ARGV, 2 do
      if redis.call('HEXISTS', akey, ARGV[i]) == 0 then n = n + 1 end
    end
  end
  if n > cap then return {'toomany', num(n)} end
end
if ARGV[2] == 'r' then
  local old = redis.call('HGETALL', akey)
  for i = 1, #old, 2 do
    redis.call('ZREM', idx_key(old[i]), member(old[i + 1], p))
  end
  redis.call('DEL', akey)
end
for i = 5, #ARGV, 2 do
  local k = ARGV[i]
  local v = ARGV[i + 1]
  local old = redis.call('HGET', akey, k)
  if old then redis.call('ZREM', idx_key(k), member(old, p)) end
  redis.call('HSET', akey, k, v)
  redis.call('ZADD', idx_key(k), 0, member(v, p))
end
redis.call('HSET', updated, p, num(now))
local out = published(p)
table.insert(out, 1, 'ok')
return out
"#,
    )
});

/// ARGV: peer, sweep batch, key... Returns the number of keys removed.
pub(crate) static UNPUBLISH_ATTRIBUTES: LazyLock<Script> = LazyLock::new(|| {
    app_script(
        r#"
local p = ARGV[1]
local now = now_ms()
sweep(now, tonumber(ARGV[2]))
if not live(p, now) then
  if redis.call('ZSCORE', presence, p) then purge(p) end
  return 0
end
local akey = attrs_key(p)
local n = 0
for i = 3, #ARGV do
  local k = ARGV[i]
  local old = redis.call('HGET', akey, k)
  if old then
    redis.call('ZREM', idx_key(k), member(old, p))
    redis.call('HDEL', akey, k)
    n = n + 1
  end
end
if n > 0 then redis.call('HSET', updated, p, num(now)) end
return n
"#,
    )
});

/// ARGV: peer. Returns nil when the peer is not online, else {updated ms ('0' = never), key,
/// value, ...}.
pub(crate) static GET_ATTRIBUTES: LazyLock<Script> = LazyLock::new(|| {
    app_script(
        r#"
local p = ARGV[1]
if not live(p, now_ms()) then return false end
return published(p)
"#,
    )
});

/// ARGV: attribute key, lex min, lex max, limit, scan budget, purge budget, with records
/// ('1' | '0'). Returns {next member ('' = none), member...} where a member is `value NUL
/// peer`; with records, each member is followed by the number n of fields of the peer's record
/// and then the record itself as returned by `published` (n fields).
/// Members of expired peers are skipped and cleaned; so are members that disagree with the
/// peer's attribute hash (defensive: cannot happen with these scripts).
///
/// Cost: per batch of index members one `ZMSCORE` for the liveness of all their peers; per
/// match one `HGETALL` (with records; it also checks the value) or one `HGET`; with records one
/// `HMGET` of the update times of the whole page.
pub(crate) static QUERY_ATTRIBUTES: LazyLock<Script> = LazyLock::new(|| {
    app_script(
        r#"
local now = now_ms()
local key = ARGV[1]
local ikey = idx_key(key)
local min = ARGV[2]
local max = ARGV[3]
local limit = tonumber(ARGV[4])
local budget = tonumber(ARGV[5])
local purge_left = tonumber(ARGV[6])
local records = ARGV[7] == '1'
local hits = {}
local found = 0
local scanned = 0
local last = nil
local done = false
while not done and found < limit and scanned < budget do
  -- a couple beyond the page: the first round usually decides whether more follow
  local want = math.min(limit - found + 2, budget - scanned)
  local batch = redis.call('ZRANGEBYLEX', ikey, min, max, 'LIMIT', 0, want)
  local peers_of = {}
  local values_of = {}
  for i, m in ipairs(batch) do
    local sep = string.find(m, '\0', 1, true)
    if sep then
      values_of[i] = string.sub(m, 1, sep - 1)
      peers_of[i] = string.sub(m, sep + 1)
    else
      -- '' is never a peer id: its score reads as absent
      values_of[i] = false
      peers_of[i] = ''
    end
  end
  local deadlines = {}
  if #batch > 0 then deadlines = redis.call('ZMSCORE', presence, unpack(peers_of)) end
  local i = 0
  for _, m in ipairs(batch) do
    i = i + 1
    scanned = scanned + 1
    last = m
    local p = peers_of[i]
    local v = values_of[i]
    local d = deadlines[i]
    if not v then
      redis.call('ZREM', ikey, m)
    elseif d and tonumber(d) >= now then
      local attrs = nil
      local current = nil
      if records then
        attrs = redis.call('HGETALL', attrs_key(p))
        for j = 1, #attrs, 2 do
          if attrs[j] == key then current = attrs[j + 1] break end
        end
      else
        current = redis.call('HGET', attrs_key(p), key)
      end
      if current == v then
        found = found + 1
        hits[found] = {m, p, attrs}
      else
        redis.call('ZREM', ikey, m)
      end
    else
      redis.call('ZREM', ikey, m)
      if purge_left > 0 then
        purge(p)
        purge_left = purge_left - 1
      end
    end
    if found >= limit then break end
  end
  if i == #batch and #batch < want then done = true end
  if last then min = '(' .. last end
end
local out = {''}
if not done and last then
  local more = redis.call('ZRANGEBYLEX', ikey, '(' .. last, max, 'LIMIT', 0, 1)
  if #more > 0 then out[1] = last end
end
local times = {}
if records and found > 0 then
  local ps = {}
  for h = 1, found do ps[h] = hits[h][2] end
  times = redis.call('HMGET', updated, unpack(ps))
end
for h = 1, found do
  out[#out + 1] = hits[h][1]
  if records then
    local attrs = hits[h][3]
    out[#out + 1] = tostring(#attrs + 1)
    out[#out + 1] = times[h] or '0'
    for j = 1, #attrs do out[#out + 1] = attrs[j] end
  end
end
return out
"#,
    )
});

/// KEYS[1] = route key; ARGV: gateway. Deletes the route only if it still names the gateway.
pub(crate) static CLEAR_ROUTE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#,
    )
});

/// Application registry scripts. KEYS[1] = `P:{apps}`.
const APPS_PRELUDE: &str = r#"
local rec = KEYS[1] .. ':rec'
local ids = KEYS[1] .. ':ids'
"#;

/// ARGV: id, JSON, only-if-absent ('1'|'0'). Returns 0 when only-if-absent and present.
pub(crate) static PUT_APP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{APPS_PRELUDE}{}",
        r#"
if ARGV[3] == '1' then
  if redis.call('HSETNX', rec, ARGV[1], ARGV[2]) == 0 then return 0 end
else
  redis.call('HSET', rec, ARGV[1], ARGV[2])
end
redis.call('ZADD', ids, 0, ARGV[1])
return 1
"#
    ))
});

/// ARGV: id. Returns 1 when the application existed.
pub(crate) static DELETE_APP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{APPS_PRELUDE}{}",
        r#"
redis.call('ZREM', ids, ARGV[1])
return redis.call('HDEL', rec, ARGV[1])
"#
    ))
});

/// ARGV: lex min, limit. Returns {next id ('' = none), JSON...}.
pub(crate) static LIST_APPS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{APPS_PRELUDE}{}",
        r#"
local limit = tonumber(ARGV[2])
local page = redis.call('ZRANGEBYLEX', ids, ARGV[1], '+', 'LIMIT', 0, limit + 1)
local out = {''}
local n = math.min(#page, limit)
for i = 1, n do
  local json = redis.call('HGET', rec, page[i])
  if json then out[#out + 1] = json end
end
if #page > limit then out[1] = page[limit] end
return out
"#
    ))
});

/// Replica registry scripts. KEYS[1] = `P:{replicas:R}`.
const REPLICAS_PRELUDE: &str = r#"
local live = KEYS[1] .. ':live'
local info = KEYS[1] .. ':info'
local function num(n) return string.format('%.0f', n) end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function sweep(now)
  local dead = redis.call('ZRANGEBYSCORE', live, '-inf', '(' .. num(now), 'LIMIT', 0, 128)
  for _, r in ipairs(dead) do
    redis.call('ZREM', live, r)
    redis.call('HDEL', info, r)
  end
end
"#;

/// ARGV: replica id, JSON, ttl ms.
pub(crate) static REGISTER_REPLICA: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{REPLICAS_PRELUDE}{}",
        r#"
local now = now_ms()
sweep(now)
redis.call('ZADD', live, num(now + tonumber(ARGV[3])), ARGV[1])
redis.call('HSET', info, ARGV[1], ARGV[2])
return 1
"#
    ))
});

/// ARGV: replica id. Returns 1 when the replica was registered and live.
pub(crate) static DEREGISTER_REPLICA: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{REPLICAS_PRELUDE}{}",
        r#"
local now = now_ms()
local s = redis.call('ZSCORE', live, ARGV[1])
redis.call('ZREM', live, ARGV[1])
redis.call('HDEL', info, ARGV[1])
if s and tonumber(s) >= now then return 1 end
return 0
"#
    ))
});

/// ARGV: max. Returns {id, JSON, id, JSON, ...} of live replicas.
pub(crate) static LIST_REPLICAS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{REPLICAS_PRELUDE}{}",
        r#"
local now = now_ms()
sweep(now)
local ids = redis.call('ZRANGEBYSCORE', live, num(now), '+inf', 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for _, r in ipairs(ids) do
  local json = redis.call('HGET', info, r)
  if json then
    out[#out + 1] = r
    out[#out + 1] = json
  end
end
return out
"#
    ))
});

/// KEYS[1] = counter map; ARGV: field, increment, max fields. Returns {1, value} or {0} when
/// the field is new and the map is full.
pub(crate) static INCR_COUNTER_FIELD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0
  and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return {0}
end
return {1, redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])}
"#,
    )
});

-- The circuit state machine of llm_circuit_breaker/_state.py, run atomically inside Redis.
-- Every admit / record / snapshot / control is one call of this script (one round trip).
--
-- KEYS[1] state hash (and the throttle's fields), KEYS[2] in-flight permits (zset: permit -> admitted at),
-- KEYS[3] failure-rate window (hash: "<bucket>:c" / "<bucket>:f" -> count)
-- ARGV: op, now ("" = the server's TIME), ttl, failure_threshold, reset_timeout,
--       success_threshold, half_open_max_calls, half_open_probe_timeout,
--       slow_call_duration, failure_rate_threshold, window, minimum_calls ("" = off),
--       throttle (its max pause in seconds; "" = off), throttle_max_wait, requests_per_minute, tokens_per_minute
--       ("" = none), tokens (the call's estimated cost), then
--       admit: lease (more slots wanted, "" = none), horizon (seconds a leased slot may be
--       away at most), unused (slots of an earlier lease given back), unused tokens;
--       record: permit, outcome, open_for ("" = none), why, pause ("" = adaptive);
--       control: action;  release: permit;
--       observe: for requests then tokens: reported ("1"), limit, remaining, reset;
--       then riders any op but control may carry (the op's own arguments padded to ARGV[25]):
--       ARGV[26..33] a response's rate-limit headers, as observe's (applied first);
--       ARGV[34..39] a budget sync: retry deposits ("" = no retry budget), their age in
--       seconds, retry withdrawals, tokens spent ("" = no spend cap), the cap's window, its
--       limit ("" = never refuse for it): an admission is refused (-3) once the fleet's
--       total, this sync's tokens included, reaches the limit.
-- Reply: {result, state, failure_count, success_count, opened_at, retry_after, repaired,
--         clean, wait, paused_for, requests_remaining, tokens_remaining, reset_in,
--         news ("" | "THROTTLED" | "UNTHROTTLED"), news_pause, news_reason,
--         lease (the leased slots' waits, comma-separated: "" none),
--         fleet retry deposits, fleet retry withdrawals (in the last 10 s), tokens spent,
--         seconds until the spend window ends ("" unless synced / none started),
--         old1, new1, reason1, old2, ...}; floats travel as strings, "" is none.
-- A change of state, or a pause of the throttle, is published on the channel named like
-- KEYS[1] (for processes that near-cache; see storage/_notices.py).
-- A result of -3 on admit: the fleet's token budget is spent (nothing was taken: no probe,
-- no permit, no throttle slot). A result of -2 on admit: the circuit admitted the call but its throttle slot is further
-- away than throttle_max_wait (nothing reserved; wait says how far).
-- A lease: with a plain CLOSED admission under a throttle, up to `lease` more slots whose
-- time is within `horizon` are reserved at once for the caller's process to hand out; a
-- slot it does not use lapses with its time (the bucket refills past it), so the fleet never
-- gets more than the bucket, and a process that dies holding a lease returns it that way.

local H, INFLIGHT, WIN = KEYS[1], KEYS[2], KEYS[3]
local op = ARGV[1]
-- 'admit+write': an admission that also writes, sent while the store checks that Redis takes
-- writes again (reads alone succeed on a full or read-only Redis, where reports would fail)
local must_write = op == 'admit+write'
if must_write then op = 'admit' end
local now = tonumber(ARGV[2])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local ttl = tonumber(ARGV[3])
local threshold = tonumber(ARGV[4])
local reset_timeout = tonumber(ARGV[5])
local success_threshold = tonumber(ARGV[6])
local max_calls = tonumber(ARGV[7])
local probe_timeout = tonumber(ARGV[8])
local slow = tonumber(ARGV[9])
local rate = tonumber(ARGV[10])
local window = tonumber(ARGV[11])
local minimum = tonumber(ARGV[12])
local throttled = ARGV[13] ~= ''
local max_pause = tonumber(ARGV[13]) or 300  -- no pause (hint or headers) lasts longer
local max_wait = tonumber(ARGV[14])
local rpm = tonumber(ARGV[15])
local tpm = tonumber(ARGV[16])
local cost = tonumber(ARGV[17]) or 0
local BUCKETS = 20
local MAX_LEASE = 64  -- slots one admission may lease (storage/_lease.py)

local transitions = {}
local repaired = 0
local lease = {}

local function num(x) return string.format('%.17g', x) end

local function fresh()
  return {state = 'CLOSED', gen = 0, seq = 0, fc = 0, sc = 0, opened_at = nil, open_until = nil, held = false,
          new = true}
end

-- Every field read back is checked: garbage (gen=-1, 1e300, open_until=nan/inf/1e18 ...)
-- would otherwise refuse calls forever. A bad field makes the circuit a fresh CLOSED one.
local function counter(x)
  return x ~= nil and x == x and x >= 0 and x < 9007199254740992 and x == math.floor(x)
end

local YEAR = 366 * 24 * 3600
local function moment(x)  -- a time stamp within a year of now, finite
  return x ~= nil and x == x and x > now - 10 * YEAR and x < now + YEAR
end

-- No TYPE check on the hot path: the state hash is read with pcall (a foreign key of another
-- type is an error reply, then repaired), and the probe and window keys are checked only by
-- the operations that use them (never by an admission into a plain CLOSED circuit).
local checked = {}
local function sure(key, want)
  if not checked[key] then
    checked[key] = true
    local kind = redis.call('TYPE', key)['ok']
    if kind ~= 'none' and kind ~= want then
      redis.call('DEL', key)
      repaired = 1
    end
  end
  return key
end

local RAW = {}  -- the throttle's fields, read by the same HMGET as the circuit's

local function load()
  local v = redis.pcall('HMGET', H, 'state', 'gen', 'seq', 'fc', 'sc', 'opened_at', 'open_until', 'held',
                        'pu', 'bk', 'pv', 'lm', 'ri', 'rc', 'rt', 'ti', 'tc', 'tt', 'rf', 'hb')
  if v['err'] then
    redis.call('DEL', H, INFLIGHT, WIN)
    repaired = 1
    return fresh()
  end
  for i = 9, 18 do RAW[i - 8] = v[i] end
  if not v[1] then return fresh() end
  local s = {state = v[1], gen = tonumber(v[2]), seq = tonumber(v[3]), fc = tonumber(v[4]),
             sc = tonumber(v[5]), opened_at = tonumber(v[6] or ''), open_until = tonumber(v[7] or ''),
             held = v[8] == '1', rf = tonumber(v[19] or ''), hb = tonumber(v[20] or '')}
  local known = s.state == 'CLOSED' or s.state == 'OPEN' or s.state == 'HALF_OPEN'
  if not known or not counter(s.gen) or not counter(s.seq) or not counter(s.fc)
      or not counter(s.sc) or s.gen > s.seq or (s.opened_at and not moment(s.opened_at))
      or (s.state == 'OPEN' and not (s.open_until and moment(s.open_until))) then
    redis.call('DEL', H, INFLIGHT, WIN)
    repaired = 1
    RAW = {}
    return fresh()
  end
  return s
end

-- The throttle of llm_circuit_breaker/_throttle.py (ThrottleCore), kept in the same hash:
-- pu paused until, bk adaptive pause, pv provisional spacing, lm limited (announced),
-- r* / t* the request / token pacers (i interval, c capacity, t theoretical arrival time).
local TFIELDS = {'pu', 'bk', 'pv', 'lm', 'ri', 'rc', 'rt', 'ti', 'tc', 'tt'}
local T = nil
local tchanged = false
local news, news_pause, news_reason = '', 0, ''

local function finite(x) return x ~= nil and x == x and x > -1e300 and x < 1e300 end

local function tload()
  local n = {}
  for i = 1, #TFIELDS do n[i] = tonumber(RAW[i] or '') end
  T = {pu = n[1], bk = n[2] or 0, pv = n[3] == 1, lm = n[4] == 1,
       R = {i = n[5] or 0, c = n[6] or 1, t = n[7]}, K = {i = n[8] or 0, c = n[9] or 1, t = n[10]}}
  -- garbage (negative rates, nan, far-away times) would stall calls: start the throttle afresh
  local ok = finite(T.bk) and T.bk >= 0 and T.bk <= 60
  for _, p in ipairs({T.R, T.K}) do
    ok = ok and finite(p.i) and p.i >= 0 and p.i < YEAR and finite(p.c) and p.c >= 1
    if p.t ~= nil then ok = ok and finite(p.t) and p.t < now + YEAR and p.t > now - YEAR end
  end
  if T.pu ~= nil then ok = ok and finite(T.pu) and T.pu < now + YEAR end
  if ok and T.pu ~= nil and T.pu > now + max_pause then T.pu = now + max_pause; tchanged = true end
  if not ok then
    T = {pu = nil, bk = 0, pv = false, lm = false, R = {i = 0, c = 1, t = nil}, K = {i = 0, c = 1, t = nil}}
    tchanged = true
  end
  if T.R.i == 0 and rpm then T.R = {i = 60 / rpm, c = math.max(1, rpm), t = nil}; tchanged = true end
  if T.K.i == 0 and tpm then T.K = {i = 60 / tpm, c = math.max(1, tpm), t = nil}; tchanged = true end
end

local function tsave()
  local function opt(x) return x ~= nil and num(x) or '' end
  redis.call('HSET', H, 'pu', opt(T.pu), 'bk', num(T.bk), 'pv', T.pv and '1' or '0',
             'lm', T.lm and '1' or '0', 'ri', num(T.R.i), 'rc', num(T.R.c), 'rt', opt(T.R.t),
             'ti', num(T.K.i), 'tc', num(T.K.c), 'tt', opt(T.K.t))
end

local function known(p) return p.i > 0 end
local function configure(p, per_second, capacity) p.i = 1 / per_second; p.c = math.max(1, capacity) end
local function earliest(p, units)
  if not known(p) or p.t == nil then return now end
  return math.max(now, p.t - (p.c - math.max(units, 1)) * p.i)
end
local function take(p, at, units)
  if known(p) then p.t = math.max(p.t or at, at) + p.i * units end
end
local function give_back(p, units)
  if known(p) and p.t ~= nil then p.t = p.t - p.i * units end
end
local function level(p)
  if not known(p) then return '' end
  local used = math.max(0, (p.t or now) - now) / p.i
  return math.max(0, math.min(math.floor(p.c), math.floor(p.c - used)))
end

local function tactive()
  return known(T.R) or known(T.K) or T.pu ~= nil
end

local function slot(units)
  return math.max(now, T.pu or now, earliest(T.R, 1), earliest(T.K, units))
end

local function rate_limited(pause)
  if pause == nil then
    T.bk = math.min(60, math.max(1, T.bk * 2))
    pause = T.bk
  end
  pause = math.min(pause, max_pause)
  T.pu = math.max(T.pu or (now + pause), now + pause)
  local was = T.lm
  T.lm = true
  if not known(T.R) then
    configure(T.R, 1 / math.max(0.005, pause / 10), 1)
    T.R.t = T.pu
    T.pv = true
    T.bk = math.max(T.bk, 1)
  end
  if not was then
    news, news_pause = 'THROTTLED', pause
    news_reason = string.format('rate limited (429): paused %.3gs', pause)
  end
  tchanged = true
end

local function succeeded()
  if T.bk > 0 then
    if T.bk <= 1 then T.bk = 0 else T.bk = T.bk / 2 end
    if T.bk == 0 and T.pv then T.R.i = 0; T.pv = false end
    tchanged = true
  end
  if T.pu ~= nil and now >= T.pu then T.pu = nil; tchanged = true end
  if T.lm and T.pu == nil then
    T.lm = false
    news, news_reason = 'UNTHROTTLED', 'pause over: a call succeeded'
    tchanged = true
  end
end

-- what headers say never puts the next unit further than max_pause away (Pacer.observe)
local function observe_bucket(p, limit, remaining, reset)
  if limit ~= nil and limit > 0 then
    local used = remaining ~= nil and (limit - remaining) or nil
    if used ~= nil and used ~= 0 and reset ~= nil and reset ~= 0 then
      configure(p, math.max(used / reset, 1 / max_pause), limit)
    elseif not known(p) then configure(p, math.max(limit / 60, 1 / max_pause), limit)
    else p.c = limit end
  end
  if remaining ~= nil and known(p) then
    local reported = math.min(now + math.max(0, p.c - remaining) * p.i, now + max_pause + (p.c - 1) * p.i)
    p.t = math.max(p.t or reported, reported)
  end
  -- nothing left until the reset and no limit to pace by: nothing goes until then (_hold)
  if remaining == 0 and reset ~= nil and reset > 0 and not known(p) then
    T.pu = math.max(T.pu or now, now + math.min(reset, max_pause))
  end
  tchanged = true
end

local function signature(s)
  return table.concat({s.state, s.gen, s.seq, s.fc, s.sc, tostring(s.opened_at), tostring(s.open_until),
                       tostring(s.held)}, '|')
end

-- rf: when the keys' TTL was last set. A forced-open circuit never expires while forced.
local function save(s)
  redis.call('HSET', H, 'state', s.state, 'gen', s.gen, 'seq', s.seq, 'fc', s.fc, 'sc', s.sc,
             'opened_at', s.opened_at and num(s.opened_at) or '',
             'open_until', s.open_until and num(s.open_until) or '', 'held', s.held and '1' or '0',
             'rf', num(now))
  for _, key in ipairs({H, INFLIGHT, WIN}) do
    if s.held then redis.call('PERSIST', key) else redis.call('EXPIRE', key, ttl) end
  end
end

local function move(s, new, reason)
  table.insert(transitions, s.state)
  table.insert(transitions, new)
  table.insert(transitions, reason)
  s.state = new
  s.seq = s.seq + 1
  s.gen = s.seq
  redis.call('DEL', INFLIGHT, WIN)
  s.sc = 0
  s.held = false
  if new ~= 'OPEN' then
    s.fc = 0
    s.opened_at = nil
    s.open_until = nil
  end
end

local function open(s, duration, reason)
  move(s, 'OPEN', reason)
  s.opened_at = now
  s.open_until = now + duration
end

local function advance(s)
  if s.state == 'OPEN' and not s.held and now >= s.open_until then
    move(s, 'HALF_OPEN', 'reset timeout elapsed')
  end
end

local function retry_after(s)
  advance(s)
  if s.state == 'OPEN' then
    if s.held then return nil end
    return math.max(0, s.open_until - now)
  end
  if s.state == 'HALF_OPEN' and redis.call('ZCARD', sure(INFLIGHT, 'zset')) >= max_calls then
    local oldest = redis.call('ZRANGE', sure(INFLIGHT, 'zset'), 0, 0, 'WITHSCORES')
    return math.max(0, tonumber(oldest[2]) + probe_timeout - now)
  end
  return 0
end

-- the failure-rate window: calls and failures per bucket of window/BUCKETS seconds. A field
-- that is not "<bucket>:c|f" -> a plain integer is garbage (HINCRBY would fail on it at every
-- report): dropped, like the hash's garbage.
local function window_totals(index)
  local calls, failures = 0, 0
  local fields = redis.call('HGETALL', sure(WIN, 'hash'))
  for i = 1, #fields, 2 do
    local bucket, kind = string.match(fields[i], '^(-?%d+):([cf])$')
    bucket = tonumber(bucket)
    local count = string.match(fields[i + 1], '^%d+$') and tonumber(fields[i + 1])
    if bucket == nil or not counter(count) then
      redis.call('HDEL', WIN, fields[i])
      repaired = 1
    elseif bucket <= index - BUCKETS then
      redis.call('HDEL', WIN, fields[i])
    elseif kind == 'c' then
      calls = calls + count
    else
      failures = failures + count
    end
  end
  return calls, failures
end

local function record_closed(s, ok, open_for, why)
  local calls, failures = 0, 0
  if rate then
    local index = math.floor(now / (window / BUCKETS))
    calls, failures = window_totals(index)  -- first: it drops garbage that HINCRBY fails on
    redis.call('HINCRBY', WIN, index .. ':c', 1)
    calls = calls + 1
    if not ok then
      redis.call('HINCRBY', WIN, index .. ':f', 1)
      failures = failures + 1
    end
  end
  if ok then
    s.fc = 0
    -- the call that reaches minimum_calls may be a success: the rate is judged after any call
    if rate and calls >= minimum and failures / calls >= rate then
      open(s, reset_timeout, string.format('failure rate %d%% over %d calls in %gs',
           math.floor(failures / calls * 100 + 0.5), calls, window))
    end
    return
  end
  s.fc = s.fc + 1
  if open_for then
    if why == '' then why = string.format('server asked to wait %gs', open_for) end
    open(s, open_for, why)
  elseif s.fc >= threshold then
    open(s, reset_timeout, s.fc .. ' consecutive failures')
  elseif rate and calls >= minimum and failures / calls >= rate then
    open(s, reset_timeout, string.format('failure rate %d%% over %d calls in %gs',
         math.floor(failures / calls * 100 + 0.5), calls, window))
  end
end

local function record_probe(s, ok, open_for, why)
  if ok then
    s.sc = s.sc + 1
    if s.sc >= success_threshold then move(s, 'CLOSED', s.sc .. ' probe successes') end
    return
  end
  local reason = 'probe failed'
  if why ~= '' then reason = reason .. ': ' .. why end
  open(s, math.max(reset_timeout, open_for or 0), reason)
end

-- A budget sync (SPEC section 16), kept in the state hash: rb the retry window as
-- "second:deposits:withdrawals" slots joined by ",", ts / tw tokens spent and when the
-- spend window started. Deposits made `age` seconds ago count from then.
local RETRY_WINDOW = 10
local budget_reply = {'', '', '', ''}
local budget_spent = false  -- the fleet's spend cap is reached (an admission is refused)
local function sync_budgets()
  local deposits, withdrawals = tonumber(ARGV[34]), tonumber(ARGV[36])
  local tokens = tonumber(ARGV[37])
  local got = redis.call('HMGET', H, 'rb', 'ts', 'tw')
  if deposits then
    local age = math.max(0, math.min(RETRY_WINDOW, tonumber(ARGV[35]) or 0))
    local second = math.floor(now)
    local first = second - RETRY_WINDOW + 1
    local slots, order = {}, {}
    for at, d, w in string.gmatch(got[1] or '', '(-?%d+):([^:,]+):([^:,]+)') do
      at, d, w = tonumber(at), tonumber(d), tonumber(w)
      if at and d and w and at >= first and at <= second and finite(d) and finite(w) and not slots[at] then
        slots[at] = {d, w}
        table.insert(order, at)
      end
    end
    local function add(at, i, amount)
      if amount and finite(amount) and amount > 0 and at >= first then
        if not slots[at] then slots[at] = {0, 0}; table.insert(order, at) end
        slots[at][i] = slots[at][i] + amount
      end
    end
    add(math.floor(now - age), 1, deposits)
    add(second, 2, withdrawals)
    local parts, total_d, total_w = {}, 0, 0
    for _, at in ipairs(order) do
      local slot = slots[at]
      total_d, total_w = total_d + slot[1], total_w + slot[2]
      table.insert(parts, at .. ':' .. num(slot[1]) .. ':' .. num(slot[2]))
    end
    local kept = table.concat(parts, ',')
    if kept ~= (got[1] or '') then redis.call('HSET', H, 'rb', kept) end
    budget_reply[1], budget_reply[2] = num(total_d), num(total_w)
  end
  if tokens then
    local window = tonumber(ARGV[38]) or 86400
    local spent, started = tonumber(got[2] or ''), tonumber(got[3] or '')
    if not (spent and finite(spent) and spent >= 0 and started and moment(started)
            and now < started + window) then
      spent, started = 0, nil
    end
    if finite(tokens) and tokens > 0 then
      spent = spent + tokens
      started = started or now
      redis.call('HSET', H, 'ts', num(spent), 'tw', num(started))
    end
    if started then budget_reply[4] = num(started + window - now) end
    budget_reply[3] = num(spent)
    local limit = tonumber(ARGV[39])
    budget_spent = started ~= nil and limit ~= nil and spent >= limit
  end
end

local s = load()
local loaded = signature(s)
local result = 0
local wait = 0
if throttled then tload() end
if throttled and ARGV[26] ~= nil and op ~= 'control' then  -- headers riding on this call
  if ARGV[26] == '1' then
    if T.pv then T.R.i = 0; T.pv = false end
    observe_bucket(T.R, tonumber(ARGV[27]), tonumber(ARGV[28]), tonumber(ARGV[29]))
  end
  if ARGV[30] == '1' then
    observe_bucket(T.K, tonumber(ARGV[31]), tonumber(ARGV[32]), tonumber(ARGV[33]))
  end
end
-- the budgets first: an admission refused for a spent cap takes nothing
if ARGV[38] ~= nil and op ~= 'control' then sync_budgets() end

if op == 'admit' then
  local plain = false  -- a CLOSED admission holding no lease of its own: it may lease slots
  local unused = tonumber(ARGV[20]) or 0
  if throttled and unused > 0 then  -- slots leased earlier and never used: back in the bucket
    give_back(T.R, math.min(unused, MAX_LEASE))
    give_back(T.K, math.max(0, tonumber(ARGV[21]) or 0))
    tchanged = true
  end
  advance(s)
  if budget_spent then
    result = -3
  elseif s.state == 'CLOSED' then
    if slow then
      s.seq = s.seq + 1
      redis.call('ZADD', sure(INFLIGHT, 'zset'), now, s.seq)
      result = s.seq
    else
      result = s.gen
      plain = true
    end
  elseif s.state == 'OPEN' then
    result = -1
  else
    -- leases run out after probe_timeout; one stamped in the future is garbage
    redis.call('ZREMRANGEBYSCORE', sure(INFLIGHT, 'zset'), '-inf', now - probe_timeout)
    redis.call('ZREMRANGEBYSCORE', sure(INFLIGHT, 'zset'), '(' .. num(now + 1), '+inf')
    if redis.call('ZCARD', sure(INFLIGHT, 'zset')) >= max_calls then
      result = -1
    else
      s.seq = s.seq + 1
      redis.call('ZADD', sure(INFLIGHT, 'zset'), now, s.seq)
      result = s.seq
    end
  end
  if result >= 0 and throttled and tactive() then
    local at = slot(cost)
    wait = at - now
    if wait > max_wait then
      redis.call('ZREM', sure(INFLIGHT, 'zset'), result)  -- a lease given back (none for a plain CLOSED call)
      result = -2
    else
      take(T.R, at, 1)
      take(T.K, at, cost)
      tchanged = true
      local more, horizon = tonumber(ARGV[18]) or 0, tonumber(ARGV[19]) or 0
      if plain and (T.pu == nil or T.pu <= now) and not T.lm then
        for _ = 1, math.min(more, MAX_LEASE) do
          local next_at = slot(cost)
          if next_at - now > horizon then break end
          take(T.R, next_at, 1)
          take(T.K, next_at, cost)
          table.insert(lease, num(next_at - now))
        end
      end
    end
  end
elseif op == 'release' then
  redis.call('ZREM', sure(INFLIGHT, 'zset'), tonumber(ARGV[18]))
  if throttled then
    give_back(T.R, 1)
    give_back(T.K, cost)
    tchanged = true
  end
elseif op == 'observe' then
  if throttled then
    if ARGV[18] == '1' then
      if T.pv then T.R.i = 0; T.pv = false end
      observe_bucket(T.R, tonumber(ARGV[19]), tonumber(ARGV[20]), tonumber(ARGV[21]))
    end
    if ARGV[22] == '1' then
      observe_bucket(T.K, tonumber(ARGV[23]), tonumber(ARGV[24]), tonumber(ARGV[25]))
    end
  end
elseif op == 'record' then
  local permit = tonumber(ARGV[18])
  local outcome = ARGV[19]
  local open_for = tonumber(ARGV[20])
  local why = ARGV[21]
  if throttled then
    if outcome == 'throttled' then rate_limited(tonumber(ARGV[22]))
    elseif outcome == 'success' then succeeded() end
  end
  local started = tonumber(redis.call('ZSCORE', sure(INFLIGHT, 'zset'), permit) or '')
  if started then redis.call('ZREM', sure(INFLIGHT, 'zset'), permit) end
  if started or (s.state == 'CLOSED' and permit == s.gen) then
    if outcome == 'success' and slow and started and now - started > slow then
      outcome = 'failure'
      why = string.format('slow call (%.3fs > %gs)', now - started, slow)
    end
    if outcome ~= 'ignored' and outcome ~= 'throttled' then
      if s.state == 'HALF_OPEN' then
        record_probe(s, outcome == 'success', open_for, why)
      else
        record_closed(s, outcome == 'success', open_for, why)
      end
    end
  end
  result = outcome
elseif op == 'control' then
  local action = ARGV[18]
  if action == 'force_open' then
    open(s, 0, 'forced open')
    s.held = true
  else
    if s.state ~= 'CLOSED' then move(s, 'CLOSED', action == 'reset' and 'reset' or 'forced closed') end
    s.fc = 0
    redis.call('DEL', WIN)
    if throttled then  -- a pause and the limits learned are forgotten (ThrottleCore.forget)
      T = {pu = nil, bk = 0, pv = false, lm = false, R = {i = 0, c = 1, t = nil}, K = {i = 0, c = 1, t = nil}}
      if rpm then T.R = {i = 60 / rpm, c = math.max(1, rpm), t = nil} end
      if tpm then T.K = {i = 60 / tpm, c = math.max(1, tpm), t = nil} end
      tchanged = true
    end
  end
elseif op ~= 'snapshot' then
  return redis.error_reply('unknown op ' .. tostring(op))
end

local retry = retry_after(s)
-- Reports and controls always write (refreshing the TTLs); an admission or a snapshot writes
-- only what it changed (and a circuit's first appearance, so that `status` lists it), and an
-- admission refreshes the TTLs at most every ttl/2: admitting into a quiet CLOSED circuit is
-- otherwise read-only.
local stale = op == 'admit' and not (s.rf and s.rf <= now and now - s.rf < ttl / 2)
if must_write or op == 'record' or op == 'control' or signature(s) ~= loaded or s.new
    or tchanged or stale then
  save(s)
end
if tchanged then tsave() end
-- A heartbeat: an admission writes one field once a second per circuit (fleet-wide), so a
-- process still connected to a demoted primary (now a replica, which serves the read-only
-- admissions) gets READONLY within a second and its client finds the new primary.
if op == 'admit' and not (s.hb and s.hb <= now and now - s.hb < 1) then
  redis.call('HSET', H, 'hb', num(now))
end
-- near-caching processes listen on the key's name: a change makes them ask again
if #transitions > 0 or news == 'THROTTLED' then redis.call('PUBLISH', H, s.state) end
local quiet = T == nil or (T.bk == 0 and not T.lm)
local clean = (s.state == 'CLOSED' and s.fc == 0 and not slow and not rate and quiet) and 1 or 0
local reply = {result, s.state, s.fc, s.sc, s.opened_at and num(s.opened_at) or '',
               retry and num(retry) or '', repaired, clean, num(wait)}
if T ~= nil then
  local reset_in = known(T.R) and num(math.max(0, (T.R.t or now) - now)) or ''
  for _, item in ipairs({num(math.max(0, (T.pu or now) - now)), tostring(level(T.R)),
                         tostring(level(T.K)), reset_in}) do
    table.insert(reply, item)
  end
else
  for _ = 1, 4 do table.insert(reply, '') end
end
table.insert(reply, news)
table.insert(reply, num(news_pause))
table.insert(reply, news_reason)
table.insert(reply, table.concat(lease, ','))
for _, item in ipairs(budget_reply) do table.insert(reply, item) end
for _, item in ipairs(transitions) do table.insert(reply, item) end
return reply

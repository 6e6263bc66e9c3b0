-- wrk script for DPoP `/auth/verify` (deploy/load.sh, docs/dpop.md): each request carries a
-- proof of its own, signed beforehand by `loadgen dpop --what verify --proofs-out FILE`,
-- whose first line is the DPoP-bound access token and every other line one proof.
-- Usage: wrk -t 1 -s deploy/dpop-verify.lua URL -- FILE
-- One wrk thread: each thread has a Lua state of its own, and two would send the same proofs.
-- A run longer than the file lasts sends proofs again, which tokend refuses as replays (401,
-- counted by wrk as non-2xx answers).

local threads = 0

function setup(thread)
  threads = threads + 1
  if threads > 1 then
    error("deploy/dpop-verify.lua runs with one wrk thread (-t 1)")
  end
end

function init(args)
  local token
  proofs = {}
  for line in io.lines(args[1]) do
    if token == nil then
      token = line
    else
      proofs[#proofs + 1] = line
    end
  end
  prefix = "GET " .. wrk.path .. " HTTP/1.1\r\nHost: " .. wrk.headers["Host"] ..
    "\r\nAuthorization: DPoP " .. token .. "\r\nDPoP: "
  next_proof = 0
end

function request()
  next_proof = next_proof % #proofs + 1
  return prefix .. proofs[next_proof] .. "\r\n\r\n"
end

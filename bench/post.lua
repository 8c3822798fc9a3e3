-- wrk script: POST the body file named by BODY_FILE with the Content-Type in BODY_TYPE.
local file = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = os.getenv("BODY_TYPE")
-- One more header, "Name: value", when EXTRA_HEADER is set.
local extra = os.getenv("EXTRA_HEADER")
if extra and extra ~= "" then
  local name, value = extra:match("^([^:]+):%s*(.*)$")
  wrk.headers[name] = value
end

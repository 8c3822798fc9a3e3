-- wrk script: POST the body file named by BODY_FILE with the Content-Type in BODY_TYPE.
local file = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = os.getenv("BODY_TYPE")

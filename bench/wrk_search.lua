-- wrk script: searches of the `entitled dev` demo customers, in turn (bench/README.md).
local paths = {}
local customers = {"cus_demo_alice", "cus_demo_bob", "cus_demo_carol", "cus_demo_dave"}
local qs = {"harrison+ford", "star", "", "indiana", "space", "war", "the", "love"}
for _, c in ipairs(customers) do
  for _, q in ipairs(qs) do
    table.insert(paths, "/v1/search?customer=" .. c .. "&q=" .. q .. "&limit=20")
  end
end
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i % #paths) + 1])
end

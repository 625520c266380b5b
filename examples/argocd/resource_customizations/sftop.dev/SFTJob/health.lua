-- Health of an sftop.dev SFTJob for Argo CD.
-- Healthy once the run Succeeded (and, with spec.promotion, was promoted), Degraded when it Failed or its promotion
-- gate refused it, Suspended while spec.suspend holds it or it waits in a
-- Kueue queue (admission, or readmission after a preemption), Progressing otherwise. A status the operator has
-- not yet written for the current generation of the spec reads Progressing, whatever its phase says.
local hs = {}
if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the sftop operator to accept the SFTJob"
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the sftop operator to act on generation " .. tostring(generation) ..
    " of the spec (status is for generation " .. tostring(observed) .. ")"
  return hs
end
local phase = obj.status.phase
local message = obj.status.message or ""
local reason = phase
local held = {}
if obj.status.conditions ~= nil then
  for _, condition in ipairs(obj.status.conditions) do
    if (condition.type == "Reconciling" or condition.type == "Stalled") and condition.status == "True" then
      held[condition.type] = true
      if condition.reason ~= nil then
        reason = condition.reason
      end
      if phase == "Succeeded" and condition.message ~= nil then
        message = condition.message
      end
    end
  end
end
local stalled = held["Stalled"] == true
local reconciling = held["Reconciling"] == true
if phase == "Succeeded" and stalled then
  -- spec.promotion: trained, but its gate refused the run; the promoted adapter is unchanged
  hs.status = "Degraded"
elseif phase == "Succeeded" and reconciling then
  -- spec.promotion: the stable path is being switched to the run
  hs.status = "Progressing"
elseif phase == "Succeeded" then
  hs.status = "Healthy"
elseif phase == "Failed" then
  hs.status = "Degraded"
elseif phase == "Suspended" or phase == "Queued" then
  hs.status = "Suspended"
else
  hs.status = "Progressing"
end
if reason ~= phase and message ~= "" then
  hs.message = phase .. " (" .. reason .. "): " .. message
elseif message ~= "" then
  hs.message = phase .. ": " .. message
else
  hs.message = phase
end
return hs

// Loaded before a README snippet (node -r): any connection to another host
// than this one throws, so a snippet that goes around the proxy fails here
// instead of reaching WeChat.
const net = require('net');

const connect = net.Socket.prototype.connect;
net.Socket.prototype.connect = function (...args) {
  // Node's own callers pass [options, callback] as one normalized array.
  const first = Array.isArray(args[0]) ? args[0][0] : args[0];
  const options = typeof first === 'object' && first !== null ? first : { host: args[1] };
  const host = options.host || 'localhost';
  if (!options.path && !['127.0.0.1', '::1', 'localhost'].includes(host)) {
    throw new Error(`the snippet bypassed the proxy: it connected to ${host}`);
  }
  return connect.apply(this, args);
};
